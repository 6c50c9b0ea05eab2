"""Load shapes: pass one next to the locustfile, ``-f loadtest/locustfile.py,loadtest/shapes/spike.py``."""
