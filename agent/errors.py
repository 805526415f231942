"""The one exception hierarchy of the Siaga agent: every module's errors derive from SiagaError."""


class SiagaError(Exception):
    """Base class for errors raised by Siaga itself (foreign exceptions are translated to these)."""
