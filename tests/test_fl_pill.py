"""The pill wrapper (fl_bridge.attacks.pill): construction, poisoning and injection on small MLP/CNN layouts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from artshield.errors import InvalidArgumentError
from artshield.fl_bridge.attacks.base import AttackContext, ModelPoisoning
from artshield.fl_bridge.attacks.pill import Pill, find_layers
from artshield.fl_bridge.updates import ParameterLayout


class FakeSignFlip(ModelPoisoning):
    """Sends the negated benign estimate, `factor` times over."""

    name = "fake-signflip"

    def __init__(self, factor: float = 1.0):
        self.factor = factor
        self.seen: AttackContext | None = None

    def craft(self, context):
        self.seen = context
        f = context.own.shape[0]
        return (-self.factor * context.reference.mean(0)).expand(f, -1).clone()


class FakeLIE(ModelPoisoning):
    """A little is enough: mean minus z standard deviations of the benign updates (omniscient)."""

    name = "fake-lie"
    needs_benign = True

    def __init__(self, z: float = 1.5):
        self.z = z
        self.seen: AttackContext | None = None

    def craft(self, context):
        self.seen = context
        ref = context.reference
        return (ref.mean(0) - self.z * ref.std(0)).expand(context.own.shape[0], -1).clone()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


MODELS = {"mlp": (mlp, (8,)), "cnn": (cnn, (3, 8, 8))}


def layout_of(model: nn.Module) -> ParameterLayout:
    return ParameterLayout.from_arrays(model.state_dict())


def updates(layout: ParameterLayout, n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(layout.size, generator=torch.Generator().manual_seed(99)) * 0.02
    return direction + shift + 0.01 * torch.randn(n, layout.size, generator=g)


def context(layout, own, benign=None, local_loss=None, global_vector=None) -> AttackContext:
    n = own.shape[0] + (0 if benign is None else benign.shape[0])
    return AttackContext(own=own, benign=benign,
                         global_vector=torch.zeros(layout.size) if global_vector is None else global_vector,
                         num_clients=n, server_round=1, generator=torch.Generator().manual_seed(0),
                         layout=layout, local_loss=local_loss)


def metrics(rows: torch.Tensor, mean: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"cos": torch.nn.functional.cosine_similarity(rows, mean.unsqueeze(0), dim=1),
            "norm": rows.norm(dim=1), "dist": (rows - mean).norm(dim=1)}


def expected_pill_size(layers, k: int) -> int:
    return sum(min(k, layer.outputs) * (layer.row_size + (layer.bias is not None)) for layer in layers)


def test_find_layers_recognises_linear_and_conv_layers_by_name_and_shape():
    layers = find_layers(layout_of(mlp()))
    assert [layer.name for layer in layers] == ["0.weight", "3.weight", "5.weight", "7.weight"]  # LayerNorm skipped
    assert [layer.bias.name for layer in layers] == ["0.bias", "3.bias", "5.bias", "7.bias"]
    conv = find_layers(layout_of(cnn()))
    assert [(layer.outputs, layer.inputs, layer.kernel) for layer in conv] == [(6, 3, 9), (8, 6, 9), (16, 128, 1),
                                                                                (5, 16, 1)]
    no_bias = find_layers(ParameterLayout({"fc.weight": (4, 3)}))
    assert no_bias[0].bias is None


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("k", [1, 2])
def test_pill_changes_only_its_coordinates_and_spares_the_last_layers(model_name, k):
    layout = layout_of(MODELS[model_name][0]())
    own = updates(layout, 4, seed=1)
    attack = Pill(FakeSignFlip(), neurons_per_layer=k, adjust="none")  # the structure, whatever the scale
    sent = attack(context(layout, own))
    assert sent.shape == own.shape

    selection = attack.last_selection
    layers = find_layers(layout)
    eligible, spared = layers[:-2], layers[-2:]
    assert selection.indices.numel() == expected_pill_size(eligible, k)
    assert set(selection.neurons) == {layer.name for layer in eligible}
    assert all(len(neurons) == k for neurons in selection.neurons.values())

    inside = selection.mask(dtype=torch.bool)
    difference = sent - own
    assert torch.count_nonzero(difference[:, ~inside]) == 0  # benign (the client's own update) outside the pill
    assert torch.all((difference[:, inside] != 0).any(dim=1))  # every client poisoned inside it
    for layer in spared:  # the classifier head is never touched
        assert torch.count_nonzero(difference[:, layer.weight.span]) == 0
        assert torch.count_nonzero(difference[:, layer.bias.span]) == 0
    torch.testing.assert_close(attack.last_scales, torch.ones(4))


def widened(values: torch.Tensor) -> tuple[float, float]:
    """The pill's range of m reference values: [min, max] widened by width / (m - 1) on both sides."""
    low, high, m = float(values.min()), float(values.max()), values.numel()
    pad = (high - low) / (m - 1)
    return low - pad, high + pad


def test_the_adjusted_update_lies_within_the_benign_ranges():
    layout = layout_of(cnn())
    own = updates(layout, 5, seed=2)
    attack = Pill(FakeSignFlip(factor=50.0), max_scale=10.0)  # a loud poison: the adjustment must rein it in
    sent = attack(context(layout, own))  # no benign updates: the attackers' own define the ranges
    mean = own.mean(0)
    reference, result = leave_one_out(own), metrics(sent, mean)
    for key in ("cos", "norm", "dist"):  # cos has no upper bound and dist no lower one (see Choices)
        low, high = widened(reference[key])
        slack = 1e-5 * max(abs(low), abs(high))
        if key != "dist":
            assert torch.all(result[key] >= low - slack), key
        if key != "cos":
            assert torch.all(result[key] <= high + slack), key
    # Reined in below the base attack's own size, but every attacker carries some poison: the widened
    # leave-one-out ranges leave room even to the attacker whose honest update is the most extreme.
    assert torch.all(attack.last_scales > 0) and torch.all(attack.last_scales < 1)

    # Without the adjustment the same poison leaves the benign range: the adjustment is what hides it.
    loud = Pill(FakeSignFlip(factor=50.0), adjust="none")(context(layout, own))
    assert torch.any(metrics(loud, mean)["dist"] > widened(reference["dist"])[1])


def test_two_attackers_without_benign_updates_still_carry_poison():
    """Two sample updates put both on an edge of every [min, max] range; the widening leaves them room."""
    layout = layout_of(mlp())
    own = updates(layout, 2, seed=12)
    attack = Pill(FakeSignFlip(factor=2.0), knowledge="own")
    assert not attack.needs_benign
    sent = attack(context(layout, own))
    assert torch.all(attack.last_scales > 0)
    inside = attack.last_selection.mask(dtype=torch.bool)
    assert torch.all((sent - own)[:, inside].norm(dim=1) > 0.02 * own[:, inside].norm(dim=1))


def leave_one_out(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each row's metrics against the mean of the other rows."""
    m = rows.shape[0]
    others = (rows.sum(0, keepdim=True) - rows) / (m - 1)
    return {"cos": torch.nn.functional.cosine_similarity(rows, others, dim=1), "norm": rows.norm(dim=1),
            "dist": (rows - others).norm(dim=1)}


def test_omniscient_base_sees_the_benign_updates_and_the_result_stays_in_their_range():
    layout = layout_of(mlp())
    clients = updates(layout, 19, seed=3)
    benign, own = clients[3:], clients[:3]  # attackers whose honest updates look like the benign ones
    base = FakeLIE(z=3.0)
    attack = Pill(base)
    assert attack.needs_benign and attack.name == "pill"
    sent = attack(context(layout, own, benign=benign))
    assert base.seen.benign is benign
    # The attackers are outside the benign set: their metrics against the benign mean are compared with each
    # benign update's metrics against the mean of the other benign updates.
    reference, honest = leave_one_out(benign), metrics(own, benign.mean(0))
    result = metrics(sent, benign.mean(0))

    def inside(values, key):
        low, high = widened(reference[key])
        above = values[key] >= low - 1e-5 * abs(low) if key != "dist" else torch.ones_like(values[key], dtype=torch.bool)
        below = values[key] <= high + 1e-5 * abs(high) if key != "cos" else torch.ones_like(values[key], dtype=torch.bool)
        return above & below

    fits = inside(honest, "cos") & inside(honest, "norm") & inside(honest, "dist")
    assert fits.tolist() == [True, True, False]  # the third attacker's honest update is itself an outlier
    for key in ("cos", "norm", "dist"):
        assert torch.all(inside(result, key)[fits]), key
    assert torch.all(attack.last_scales[fits] > 0)
    # The outlier gets the scale of least violation: its pill does not push it further out.
    assert result["cos"][2] >= honest["cos"][2]

    # An omniscient base without benign updates gets the attackers' own updates as the estimate.
    base2 = FakeLIE()
    Pill(base2)(context(layout, own))
    assert base2.seen.benign is own


def test_only_the_requested_adjustment_is_enforced():
    layout = layout_of(mlp())
    own = updates(layout, 5, seed=4)
    mean = own.mean(0)
    reference = leave_one_out(own)
    sim_only = Pill(FakeSignFlip(factor=20.0), adjust="sim", max_scale=50.0)
    result = metrics(sim_only(context(layout, own)), mean)
    assert torch.all(result["cos"] >= widened(reference["cos"])[0] - 1e-6)
    assert torch.any(result["dist"] > widened(reference["dist"])[1])  # unchecked: the poison runs over
    dis_only = Pill(FakeSignFlip(factor=20.0), adjust="dis", max_scale=50.0)
    result = metrics(dis_only(context(layout, own)), mean)
    assert torch.all(result["dist"] <= widened(reference["dist"])[1] * (1 + 1e-5))
    assert torch.all(result["norm"] <= widened(reference["norm"])[1] * (1 + 1e-5))


def _targeted_loss(layout, hot: dict[str, torch.Tensor]):
    """A loss whose gradient magnitude is `hot` on the named weights, tiny elsewhere."""
    weights = torch.full((layout.size,), 1e-4)
    for name, values in hot.items():
        weights[layout[name].span] = values.reshape(-1)
    return lambda vector: (weights * vector).sum()


def test_gradient_search_follows_the_connected_path():
    layout = layout_of(mlp())
    first = torch.full((16, 8), 1e-3)
    first[5] = 1.0  # neuron 5 of layer 0 is the start point
    second = torch.full((12, 16), 1e-3)
    second[3, 5] = 0.5  # neuron 3 is the one most connected to neuron 5...
    second[7, :5] = 1.0  # ...although neuron 7 has the largest row in total
    loss = _targeted_loss(layout, {"0.weight": first, "3.weight": second})
    attack = Pill(FakeSignFlip())
    attack(context(layout, updates(layout, 3, seed=5), local_loss=loss))
    assert attack.last_selection.neurons == {"0.weight": (5,), "3.weight": (3,)}


def test_a_linear_layer_after_a_convolution_links_through_the_flattened_channel():
    layout = layout_of(cnn())
    conv1 = torch.full((6, 3, 3, 3), 1e-3)
    conv1[2] = 1.0
    conv2 = torch.full((8, 6, 3, 3), 1e-3)
    conv2[4, 2] = 1.0
    fc = torch.full((16, 128), 1e-3)
    fc[9, 4 * 16:5 * 16] = 1.0  # channel 4's block of the flattened map feeds neuron 9
    fc[1, :40] = 1.0  # a larger row, but not linked to channel 4
    loss = _targeted_loss(layout, {"0.weight": conv1, "2.weight": conv2, "5.weight": fc})
    attack = Pill(FakeSignFlip(), skip_last_layers=1)
    attack(context(layout, updates(layout, 3, seed=6), local_loss=loss))
    assert attack.last_selection.neurons == {"0.weight": (2,), "2.weight": (4,), "5.weight": (9,)}


def test_dynamic_search_follows_the_data_and_static_keeps_the_first_pill():
    layout = layout_of(mlp())
    own = updates(layout, 3, seed=7)

    def loss_on(seed):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        model = mlp()

        def loss(vector):
            params = layout.unflatten(vector)
            return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
        return loss

    global_vector = layout.flatten(mlp().state_dict())
    picks = {}
    for search in ("dynamic", "static"):
        attack = Pill(FakeSignFlip(), search=search, neurons_per_layer=2)
        selections = []
        for seed in (0, 1, 2, 3):
            attack(context(layout, own, local_loss=loss_on(seed), global_vector=global_vector))
            selections.append(attack.last_selection.neurons)
        picks[search] = selections
    assert len({tuple(sorted(s.items())) for s in picks["dynamic"]}) > 1  # the pill moves with the data
    assert all(s == picks["static"][0] for s in picks["static"])  # static: the first round's pill
    assert picks["static"][0] == picks["dynamic"][0]

    # Without a loss the honest updates decide: different updates, different pill.
    a, b = Pill(FakeSignFlip()), Pill(FakeSignFlip())
    a(context(layout, own))
    b(context(layout, updates(layout, 3, seed=8, shift=0.0) * torch.rand(layout.size,
                                                                         generator=torch.Generator().manual_seed(1))))
    assert a.last_selection.neurons != b.last_selection.neurons


def test_a_model_with_few_layers_still_gets_a_pill_and_the_mean_carrier_is_exactly_the_poison():
    layout = ParameterLayout({"fc.weight": (4, 6), "fc.bias": (4,)})
    own = updates(layout, 3, seed=9)
    attack = Pill(FakeSignFlip(), carrier="mean", adjust="none")
    sent = attack(context(layout, own))
    assert attack.last_selection.neurons.keys() == {"fc.weight"}
    inside = attack.last_selection.mask(dtype=torch.bool)
    assert inside.sum() == 7
    mean = own.mean(0)
    torch.testing.assert_close(sent[:, ~inside], mean[~inside].expand(3, -1))
    torch.testing.assert_close(sent[:, inside], (-mean[inside]).expand(3, -1))


@pytest.mark.parametrize("kwargs, culprit", [
    ({"neurons_per_layer": 0}, "neurons_per_layer"),
    ({"skip_last_layers": -1}, "skip_last_layers"),
    ({"search": "sometimes"}, "search"),
    ({"adjust": "sim+size"}, "adjust"),
    ({"adjust": "sim+sim"}, "adjust"),
    ({"importance": "vibes"}, "importance"),
    ({"carrier": "nobody"}, "carrier"),
    ({"max_scale": 0}, "max_scale"),
    ({"max_scale": float("inf")}, "max_scale"),
    ({"quantile": 0.5}, "quantile"),
])
def test_bad_parameters_are_refused_by_name(kwargs, culprit):
    with pytest.raises(InvalidArgumentError, match=culprit):
        Pill(FakeSignFlip(), **kwargs)


def test_bad_base_and_missing_loss_are_refused():
    with pytest.raises(InvalidArgumentError, match="base"):
        Pill("lie")
    with pytest.raises(InvalidArgumentError, match="base"):
        Pill(Pill(FakeSignFlip()))
    layout = layout_of(mlp())
    with pytest.raises(InvalidArgumentError, match="local_loss"):
        Pill(FakeSignFlip(), importance="gradient")(context(layout, updates(layout, 2, seed=10)))
    with pytest.raises(InvalidArgumentError, match="no Linear or convolution"):
        Pill(FakeSignFlip())(context(ParameterLayout({"scale": (5,)}), torch.zeros(2, 5)))


@pytest.fixture(scope="module")
def digits_round():
    """One real round on the digits task: 20 clients (Dirichlet 0.5) train from the initial model."""
    from artshield.fl_bridge import tasks
    from artshield.fl_bridge.partition import partition
    from artshield.fl_bridge.training import LocalTraining, loss_at, train_locally

    task = tasks.load_task("digits")
    train = task.train_set()
    model = task.build_model(0)
    layout = layout_of(model)
    global_vector = layout.flatten(model.state_dict())
    parts = partition(train.labels, 20, "dirichlet", alpha=0.5, seed=0)
    config = LocalTraining(epochs=1, lr=0.5, batch_size=32)
    deltas = torch.stack([train_locally(model, layout, global_vector, train.subset(part), config,
                                        torch.Generator().manual_seed(i), client_index=i)
                          for i, part in enumerate(parts)])
    own, benign = deltas[:4], deltas[4:]
    ctx = AttackContext(own=own, benign=benign, global_vector=global_vector, num_clients=20, server_round=1,
                        generator=torch.Generator().manual_seed(0), layout=layout,
                        local_loss=loss_at(model, layout, train.subset(torch.cat(parts[:4]))))
    return ctx


@pytest.mark.parametrize("base", ["lie", "signflip", "minmax", "ipm"])
def test_the_pill_carries_each_base_attacks_poison_on_real_digits_updates(digits_round, base):
    """Regression: the pill used to send the honest update (scale 0 from degenerate own-update ranges)."""
    from artshield.fl_bridge.attacks.registry import make_attack

    ctx = digits_round
    attack = make_attack("pill", base=base)
    assert attack.needs_benign  # omniscient by default: the benign updates define the stealth ranges
    sent = attack(ctx)
    inside = attack.last_selection.mask(dtype=torch.bool)
    # The 64-32-10 MLP has two layers: the pill is a path through both (one hidden neuron, one class row).
    assert set(attack.last_selection.neurons) == {"1.weight", "3.weight"}
    change = sent - ctx.own
    assert torch.count_nonzero(change[:, ~inside]) == 0
    ratio = change[:, inside].norm(dim=1) / ctx.own[:, inside].norm(dim=1)
    assert torch.all(attack.last_scales > 0), attack.last_scales
    assert torch.all(ratio > 0.05) and float(ratio.mean()) > 0.2, ratio
    # The poison is the base's own deviation, scaled: its direction on the pill is the base attack's.
    poison = attack.base(replace(ctx)) - ctx.benign.mean(0)
    cos = torch.nn.functional.cosine_similarity(change[:, inside], poison[:, inside], dim=1)
    assert torch.all(cos > 0.99), cos
    # ...and stays within the benign updates' (widened, leave-one-out) ranges of distance and norm.
    reference, result = leave_one_out(ctx.benign), metrics(sent, ctx.benign.mean(0))
    fits = metrics(ctx.own, ctx.benign.mean(0))["dist"] <= widened(reference["dist"])[1]
    assert torch.all(result["dist"][fits] <= widened(reference["dist"])[1] * (1 + 1e-5))
