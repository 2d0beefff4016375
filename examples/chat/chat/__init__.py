"""A small chat service on Re:BEAM: a lobby, rooms as supervised actors, and a demo."""
