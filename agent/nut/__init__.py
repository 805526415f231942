"""The NUT network protocol for the office's servers: the protocol (``proto``), hashed passwords
(``auth``), the TCP server (``server``) and the shutdown sequence that drives FSD (``shutdown``)."""
