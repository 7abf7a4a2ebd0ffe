"""The ClientApp: artshield's honest digits client; each SuperNode trains on its ``partition-id``.

Start every SuperNode with ``--node-config "partition-id=<i> num-partitions=<n>"``; n must equal
``num-partitions`` in pyproject.toml (the partitions are drawn here, once, from the same seed).
"""

from artshield.fl_bridge import partition, tasks, training
from artshield.fl_bridge.clients import build_client_app

NUM_PARTITIONS, SEED = 2, 0

task = tasks.load_task("digits")
partitions = partition.partition(task.train_set().labels, NUM_PARTITIONS, "iid", seed=SEED)
app = build_client_app(task, partitions, training.LocalTraining(epochs=2, lr=0.1), seed=SEED)
