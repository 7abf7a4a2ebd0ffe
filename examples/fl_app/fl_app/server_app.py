"""The ServerApp: artshield's RobustStrategy (a Flower FedAvg subclass) with a rule from the registry."""

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from artshield.fl_bridge import tasks, training
from artshield.fl_bridge.defenses.registry import make_defense
from artshield.fl_bridge.messages import arrays_to_vector, state_to_arrays
from artshield.fl_bridge.strategy import RobustStrategy
from artshield.fl_bridge.updates import ParameterLayout

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    task = tasks.load_task("digits")
    model = task.build_model(int(config["seed"]))
    layout = ParameterLayout.from_arrays(model.state_dict())
    strategy = RobustStrategy(make_defense(str(config["defense"])), layout, seed=int(config["seed"]),
                              fraction_evaluate=0.0, min_available_nodes=int(config["num-partitions"]))

    def evaluate(server_round: int, arrays) -> MetricRecord:
        vector = arrays_to_vector(arrays, layout)
        return MetricRecord(training.evaluate_model(model, layout, vector, task.test_set()))

    result = strategy.start(grid=grid, initial_arrays=state_to_arrays(model.state_dict()),
                            num_rounds=int(config["num-server-rounds"]), evaluate_fn=evaluate)
    print("final test accuracy:", result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)])
