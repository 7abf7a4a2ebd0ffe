"""artshield.fl_bridge as a Flower app: ``flwr run`` on a SuperLink with SuperNodes (see ../README.md)."""
