"""The Python API: a recae home as a ``Store``, a published model as a ``Model``, DataFrames in and out.

``import recae`` hands these names on lazily (``recae/__init__.py``); the command line and the HTTP API call the
same library functions, so every figure and list is theirs.
"""

from recae.api.experiment import train as train
from recae.api.model import Model as Model
from recae.api.model import load_model as load_model
from recae.api.store import Store as Store
from recae.api.store import open_store as open_store
