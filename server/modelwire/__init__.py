"""modelwire: a gRPC model-serving worker for large language models."""

from pkgutil import extend_path

# modelwire.v1 and modelwire.client are the modelwire-client distribution's. Installed from wheels,
# both distributions fill one modelwire/ directory; where they sit on different sys.path entries
# (this server editable from a checkout, the client from a wheel), look in each of them.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
