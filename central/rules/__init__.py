"""Pure rules of the coordinator: no I/O, no clock, no threads (contract ``central-rules-pure``).
Every function takes the time it needs as an argument (epoch seconds of the coordinator)."""
