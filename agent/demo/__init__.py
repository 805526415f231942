"""``siaga demo``: the whole system on one machine (broker, simulated offices, coordinator) playing
the story the project was born from. It orchestrates processes and reads the coordinator's HTTP
API; it never imports the coordinator."""
