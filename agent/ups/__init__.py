"""The UPS over serial: pure codecs for Megatec/Q1 and APC Smart (``codec``), values derived as
NUT derives them (``derive``), and the poller thread with ``siaga ups probe`` (``link``)."""
