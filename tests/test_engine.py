"""Engine tests: pruned model == original masked by an oracle written without the library.

The oracle (:func:`masked_original`) reads only the plan JSON (layer output
tensor -> kept channels) and the ORIGINAL model.  It walks the graph in order,
tracks for every tensor which positions of its channel axis (axis 1) the plan
removes, and zeroes those input slices at every channel-contracting consumer
(Conv weight axis 1, Gemm B rows / columns per transB).  Nothing else changes,
so the masked original computes exactly what a correct pruned model computes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import builders
import onnx_pfgdf
from onnx_pfgdf import CriterionConfig, KeepRule, PruneConfig
from onnx_pfgdf.plan import load_plan

# --------------------------------------------------------------------------- the oracle

#: Ops whose output channel i is a function of input channel i only.
PASSTHROUGH = frozenset(
    {"Relu", "Sigmoid", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "Identity"}
)
#: Per-channel arithmetic; two channel tensors must carry the same removed channels.
ELEMENTWISE = frozenset({"Add", "Mul", "Sub", "Div"})


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    return {
        vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        for vi in [*g.input, *g.value_info, *g.output]
    }


def masked_original(model: onnx.ModelProto, plan: Mapping[str, object]) -> onnx.ModelProto:
    """The original ``model`` with the plan's removed channels zeroed at contracting consumers.

    Fails the test (AssertionError) when the plan names a tensor that is not a
    Conv/Gemm output of ``model``, lists a wrong filter count, couples tensors
    that do not remove the same channels, or removes channels that reach an op
    the oracle has no rule for or a graph output.
    """
    assert plan["format"] == "onnx-pfgdf-plan" and plan["version"] == 1
    layers: Mapping[str, Mapping[str, object]] = plan["layers"]
    out = copy.deepcopy(model)
    shapes = _shapes(model)
    inits = {t.name: numpy_helper.to_array(t).copy() for t in out.graph.initializer}
    removed: dict[str, np.ndarray] = {}  # tensor -> bool mask over its channel axis
    used: set[str] = set()
    uses: dict[str, int] = {}
    for node in out.graph.node:
        for t in node.input:
            uses[t] = uses.get(t, 0) + 1

    def own_weight(node: onnx.NodeProto) -> np.ndarray:
        """The node's weight, copied under a private name when other nodes share it."""
        name = node.input[1]
        if uses[name] > 1:
            uses[name] -= 1
            private = f"{name}__oracle_{node.name}"
            inits[private] = inits[name].copy()
            out.graph.initializer.append(numpy_helper.from_array(inits[private], private))
            node.input[1] = private
            name = private
        return inits[name]

    def created(tensor: str, filters: int) -> np.ndarray:
        mask = np.zeros(filters, dtype=bool)
        if tensor in layers:
            entry = layers[tensor]
            assert entry["filters"] == filters, f"plan says {tensor} has {entry['filters']} filters, it has {filters}"
            keep = np.asarray(entry["keep"], dtype=np.int64)
            assert list(keep) == sorted(set(keep.tolist())), f"keep list of {tensor} is not sorted/unique"
            assert keep.size >= 1 and keep.min() >= 0 and keep.max() < filters
            mask[:] = True
            mask[keep] = False
            used.add(tensor)
        return mask

    def mask_of(tensor: str) -> np.ndarray | None:
        if tensor in removed:
            return removed[tensor]
        if tensor in inits or tensor not in shapes or len(shapes[tensor]) < 2:
            return None
        return np.zeros(shapes[tensor][1], dtype=bool)  # e.g. the graph input

    for node in out.graph.node:
        op, x = node.op_type, node.input[0]
        xm = mask_of(x)
        if xm is None:
            xm = np.zeros(0, dtype=bool)
        if op == "Conv":
            w = own_weight(node)
            group = int(_attr(node, "group", 1))
            if group == 1:
                w[:, xm] = 0.0
                removed[node.output[0]] = created(node.output[0], w.shape[0])
            elif w.shape[1] == 1 and w.shape[0] == group:
                removed[node.output[0]] = xm  # depthwise: output channel c is input channel c
            else:  # grouped: the filters of block b read input channels b*cin_g .. (b+1)*cin_g - 1
                rows, cin_g = w.shape[0] // group, w.shape[1]
                for b in range(group):
                    w[b * rows:(b + 1) * rows][:, xm[b * cin_g:(b + 1) * cin_g]] = 0.0
                removed[node.output[0]] = created(node.output[0], w.shape[0])
        elif op == "Gemm":
            b = own_weight(node)
            if int(_attr(node, "transB", 0)):
                b[:, xm] = 0.0
                removed[node.output[0]] = created(node.output[0], b.shape[0])
            else:
                b[xm, :] = 0.0
                removed[node.output[0]] = created(node.output[0], b.shape[1])
        elif op in PASSTHROUGH:
            removed[node.output[0]] = xm
        elif op in ELEMENTWISE:
            masks = [removed[t] for t in node.input if t in removed]
            for m in masks[1:]:
                np.testing.assert_array_equal(m, masks[0], err_msg=f"{node.name} adds tensors pruned differently")
            removed[node.output[0]] = masks[0]
        elif op == "Concat":
            assert int(_attr(node, "axis", 1)) == 1
            removed[node.output[0]] = np.concatenate([mask_of(t) for t in node.input])
        elif op == "Flatten":
            assert int(_attr(node, "axis", 1)) == 1
            removed[node.output[0]] = np.repeat(xm, math.prod(shapes[x][2:]))
        else:
            for t in node.input:
                m = mask_of(t)
                assert m is None or not m.any(), f"plan removes channels of {t}, read by unsupported {op}"
    for o in out.graph.output:
        m = removed.get(o.name)
        assert m is None or not m.any(), f"plan removes channels of graph output {o.name}"
    assert used == set(layers), f"plan layers that are no Conv/Gemm output: {set(layers) - used}"
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(inits[t.name], t.name))
    return out


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU, one thread); outputs keyed by name."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def seeded_inputs(seed: int, shape: tuple[int, ...] = builders.IN_SHAPE) -> dict[str, np.ndarray]:
    """Standard-normal feed for the graph input ``x``."""
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def assert_equivalent(original: onnx.ModelProto, pruned: onnx.ModelProto, plan: Mapping[str, object],
                      samples: int = 3) -> None:
    """``pruned`` computes what the oracle-masked ``original`` computes, on seeded inputs."""
    masked = masked_original(original, plan)
    for seed in range(samples):
        feeds = seeded_inputs(100 + seed)
        want, got = run_model(masked, feeds), run_model(pruned, feeds)
        assert set(got) == set(want)
        for name, ref in want.items():
            scale = max(float(np.max(np.abs(ref))), 1e-6)
            if name == "y":
                assert float(np.std(ref)) > 1e-3 * scale, "degenerate test model: constant logits"
            np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def assert_plan_matches_groups(case: builders.Case, plan: Mapping[str, object], ratio: float,
                               min_keep: int = 1) -> None:
    """Each prunable group loses ``round(ratio*C)`` channels (min_keep respected), coupled layers agree."""
    layers = plan["layers"]
    members = {m for group, _ in case.groups for m in group}
    assert set(layers) <= members, f"plan prunes {set(layers) - members}, expected only {members}"
    assert not set(layers) & set(case.frozen), "plan prunes a frozen layer"
    for group, c in case.groups:
        blocks = case.blocks.get(group[0], 1)
        n_keep = max(c - round(ratio * c), min_keep)
        n_keep = min(c, -(-n_keep // blocks) * blocks)  # grouped convs: a multiple of their group
        if n_keep == c:
            assert not set(group) & set(layers), f"{group} should keep all {c} channels"
            continue
        assert set(group) <= set(layers), f"coupled layers {group} must all be listed"
        keeps = [layers[m]["keep"] for m in group]
        assert all(k == keeps[0] for k in keeps), f"coupled layers {group} keep different channels: {keeps}"
        assert all(layers[m]["filters"] == c for m in group)
        assert len(keeps[0]) == n_keep, f"{group}: kept {len(keeps[0])} of {c} at ratio {ratio}"
        per_block = np.bincount(np.asarray(keeps[0]) // (c // blocks), minlength=blocks)
        assert np.all(per_block == n_keep // blocks), f"{group}: unequal blocks {per_block.tolist()}"


def _node_by_output(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.output[0] == tensor)


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# --------------------------------------------------------------------------- oracle self-checks


def test_oracle_detects_a_wrong_rewrite() -> None:
    """The oracle is not vacuous: keeping the wrong channels of c2 is caught."""
    case = builders.vgg_chain()
    result = onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5))
    plan = result.plan.to_dict()
    keep = plan["layers"]["c2"]["keep"]
    lying = json.loads(json.dumps(plan))
    lying["layers"]["c2"]["keep"] = [i for i in range(8) if i not in keep][: len(keep)]
    with pytest.raises(AssertionError):
        assert_equivalent(case.model, result.model, lying, samples=1)


def test_oracle_refuses_plans_that_reach_graph_outputs() -> None:
    case = builders.conv_graph_output()
    plan = {"format": "onnx-pfgdf-plan", "version": 1,
            "layers": {"feat": {"node": "n", "filters": 8, "keep": [0, 1]}}}
    with pytest.raises(AssertionError, match="graph output feat"):
        masked_original(case.model, plan)


# --------------------------------------------------------------------------- every builder


BUILDERS = {b.__name__: b for b in builders.ALL_BUILDERS}
CASES = {name: b() for name, b in BUILDERS.items()}


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("criterion", ["l1", "pfgdf"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_pruned_equals_masked_original(name: str, criterion: str, ratio: float) -> None:
    case = CASES[name]
    result = onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig(criterion), ratio=ratio))
    plan = result.plan.to_dict()
    onnx.checker.check_model(result.model, full_check=True)
    assert result.verification is not None and result.verification.passed
    assert_plan_matches_groups(case, plan, ratio)
    assert_equivalent(case.model, result.model, plan)
    for dw, carrier in case.dw_convs.items():
        n_kept = len(plan["layers"][carrier]["keep"])
        node = _node_by_output(result.model, dw)
        assert _attr(node, "group", 1) == n_kept
        assert _initializer(result.model, node.input[1]).shape[0] == n_kept


@pytest.mark.parametrize("name", list(BUILDERS))
def test_frozen_groups_carry_reasons(name: str) -> None:
    case = CASES[name]
    report = onnx_pfgdf.analyze(case.model).report
    reasons = {layer: "; ".join(f.reasons) for f in report.frozen for layer in f.layers}
    for layer, word in case.frozen.items():
        assert layer in reasons, f"{layer} should be frozen; frozen: {reasons}"
        assert word in reasons[layer]
    prunable = {m for group, _ in case.groups for m in group}
    assert not prunable & set(reasons)
    assert report.prunable_groups == len(case.groups)


def test_keep_rule_min_keep_and_round_to() -> None:
    case = CASES["vgg_chain"]
    config = PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.75, keep_rule=KeepRule(min_keep=6))
    plan = onnx_pfgdf.prune(case.model, config).plan.to_dict()
    assert {k: len(v["keep"]) for k, v in plan["layers"].items()} == {"c1": 6, "c2": 6, "c3": 6}
    config = PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.6,
                         keep_rule=KeepRule(round_to=4, round_min_channels=1))
    result = onnx_pfgdf.prune(case.model, config)
    plan = result.plan.to_dict()
    # 8 - round(4.8) = 3 -> 4; 16 - round(9.6) = 6 -> 8
    assert {k: len(v["keep"]) for k, v in plan["layers"].items()} == {"c1": 4, "c2": 4, "c3": 8}
    assert_equivalent(case.model, result.model, plan, samples=1)
    # By default only groups of >= 32 channels are rounded: these narrow ones keep 3, 3, 6.
    config = PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.6, keep_rule=KeepRule(round_to=4))
    plan = onnx_pfgdf.prune(case.model, config).plan.to_dict()
    assert {k: len(v["keep"]) for k, v in plan["layers"].items()} == {"c1": 3, "c2": 3, "c3": 6}
    assert KeepRule(round_to=8).apply(19, 64) == 24 and KeepRule(round_to=8).apply(19, 31) == 19
    # Grouped convs: a multiple of the blocks (and of round_to: their lcm), at least one per block.
    assert KeepRule().apply(5, 12, blocks=4) == 8 and KeepRule().apply(0, 12, blocks=4) == 4
    assert KeepRule(round_to=8).apply(19, 96, blocks=3) == 24 and KeepRule(round_to=8).apply(25, 96, blocks=3) == 48
    assert KeepRule(round_to=8).apply(50, 64, blocks=4) == 56


# --------------------------------------------------------------------------- counts


def _vgg_counts(k1: int, k2: int, k3: int) -> tuple[int, int]:
    """(params, MACs) of vgg_chain with widths k1, k2, k3 on an 8x8 input, by hand.

    Conv 3x3 pad 1 keeps 8x8: MACs = 64 * out * in * 9; params = out*in*9 + out
    (bias) + 4*out (BN); Gemm(k3 -> 10): 10*k3 MACs, 10*k3 + 10 params.
    """
    macs = 64 * 9 * (k1 * 3 + k2 * k1 + k3 * k2) + 10 * k3
    params = (k1 * 27 + k1 + 4 * k1) + (k2 * k1 * 9 + k2 + 4 * k2) + (k3 * k2 * 9 + k3 + 4 * k3) + (10 * k3 + 10)
    return params, macs


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_vgg_counts_drop_by_hand_computed_amount(ratio: float) -> None:
    case = CASES["vgg_chain"]
    result = onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=ratio))
    k = [8 - round(ratio * 8), 8 - round(ratio * 8), 16 - round(ratio * 16)]
    params0, macs0 = _vgg_counts(8, 8, 16)
    params1, macs1 = _vgg_counts(*k)
    rep = result.report
    assert (rep.original.params, rep.original.macs, rep.original.filters) == (params0, macs0, 32)
    assert (rep.pruned.params, rep.pruned.macs, rep.pruned.filters) == (params1, macs1, sum(k))
    assert rep.reduction["macs"] == pytest.approx((macs0 - macs1) / macs0)
    assert rep.reduction["params"] == pytest.approx((params0 - params1) / params0)
    # and the model itself holds exactly that many float parameters
    held = sum(numpy_helper.to_array(t).size for t in result.model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)
    assert held == params1


# --------------------------------------------------------------------------- alpha mode


def test_alpha_mode_prunes_a_planted_outlier_filter() -> None:
    case = builders.vgg_chain(seed=11, widths=(12, 8, 16))
    model = copy.deepcopy(case.model)
    w_init = next(t for t in model.graph.initializer if t.name == "c1.W")
    w = numpy_helper.to_array(w_init).copy()
    w[5] *= 8.0  # a rare filter: its mean |w| is ~8 sigma away from the others
    w_init.CopyFrom(numpy_helper.from_array(w, "c1.W"))
    config = PruneConfig(recover="none", criterion=CriterionConfig("pfgdf", statistic="l1", side="outside", alpha=2.0))
    result = onnx_pfgdf.prune(model, config)
    plan = result.plan.to_dict()
    assert plan["layers"]["c1"]["keep"] == [i for i in range(12) if i != 5]
    assert_equivalent(model, result.model, plan)


def test_pruned_model_keeps_a_dynamic_batch() -> None:
    model = builders.vgg_chain().model
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    result = onnx_pfgdf.prune(model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    masked = masked_original(model, result.plan.to_dict())
    np.testing.assert_allclose(run_model(result.model, feeds)["y"], run_model(masked, feeds)["y"],
                               rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- plans, purity, verify


def test_plan_round_trip_is_byte_identical(tmp_path) -> None:
    case = CASES["resnet_blocks"]
    config = PruneConfig(recover="none", criterion=CriterionConfig("pfgdf"), ratio=0.5)
    result = onnx_pfgdf.prune(case.model, config)
    document = result.plan.to_dict()
    replay = onnx_pfgdf.apply_plan(case.model, document, config)
    assert replay.model.SerializeToString() == result.model.SerializeToString()
    path = tmp_path / "plan.json"
    result.plan.save(path)
    loaded = load_plan(path)
    assert loaded == json.loads(json.dumps(document)) == document
    from_file = onnx_pfgdf.apply_plan(case.model, loaded, config)
    assert from_file.model.SerializeToString() == result.model.SerializeToString()
    assert from_file.plan.to_dict() == document


@pytest.mark.parametrize("name", ["vgg_chain", "se_block", "decomposed_bn"])
def test_prune_never_mutates_its_input(name: str) -> None:
    model = BUILDERS[name]().model
    before = model.SerializeToString()
    onnx_pfgdf.prune(model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5))
    onnx_pfgdf.analyze(model)
    assert model.SerializeToString() == before


def test_verify_passes_on_good_and_fails_on_perturbed_model() -> None:
    case = CASES["concat_branches"]
    result = onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5))
    plan = result.plan.to_dict()
    good = onnx_pfgdf.verify(case.model, result.model, plan)
    assert good.passed and good.max_rel_error <= 1e-4
    bad = copy.deepcopy(result.model)
    cc = _node_by_output(bad, "cc")
    w_init = next(t for t in bad.graph.initializer if t.name == cc.input[1])
    w = numpy_helper.to_array(w_init).copy()
    w[0, 0] += 0.5
    w_init.CopyFrom(numpy_helper.from_array(w, w_init.name))
    perturbed = onnx_pfgdf.verify(case.model, bad, plan)
    assert not perturbed.passed
    assert perturbed.max_rel_error > 1e-4


# --------------------------------------------------------------------------- property test

KINDS = st.sampled_from(["conv", "residual", "concat", "grouped"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    stem=st.integers(2, 12),
    blocks=st.lists(st.tuples(KINDS, st.integers(2, 12)), min_size=1, max_size=4),
    ratio=st.sampled_from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    criterion=st.sampled_from(["l1", "pfgdf", "fpgm"]),
)
def test_random_chains_pruned_equal_masked_original(seed, stem, blocks, ratio, criterion) -> None:
    case = builders.random_chain(seed, [("conv", stem), *blocks])
    result = onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig(criterion), ratio=ratio))
    plan = result.plan.to_dict()
    assert_plan_matches_groups(case, plan, ratio)
    assert_equivalent(case.model, result.model, plan, samples=1)


# --------------------------------------------------------------------------- protected layers


def test_protected_layer_keeps_its_group_whole() -> None:
    """Protecting b2s (a projection shortcut) keeps b2b, coupled to it by the Add, whole too."""
    case = CASES["resnet_blocks"]
    config = PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5, protect=("b2s", "Conv_b1a*"))
    result = onnx_pfgdf.prune(case.model, config)
    layers = result.plan.to_dict()["layers"]
    assert set(layers) == {"stem", "b1b", "b2a"}
    reasons = {layer: "; ".join(f.reasons) for f in result.report.frozen for layer in f.layers}
    assert "'b2s' matches layer b2s" in reasons["b2b"] and "'Conv_b1a*' matches layer b1a" in reasons["b1a"]
    assert_equivalent(case.model, result.model, result.plan.to_dict(), samples=1)
    with pytest.raises(onnx_pfgdf.BadInputError, match="'head\\*' matches no Conv/Gemm layer"):
        onnx_pfgdf.prune(case.model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5,
                                                 protect=("head*",)))


def test_verification_looks_through_a_saturated_softmax() -> None:
    """y = Softmax(1000 * logits) is one-hot whatever the logits: the logits are compared as well."""
    model = copy.deepcopy(builders.vgg_chain().model)
    gemm = next(n for n in model.graph.node if n.output[0] == "y")
    gemm.output[0] = "logits"
    model.graph.initializer.append(numpy_helper.from_array(np.float32(1000.0), "k"))
    model.graph.node.extend([helper.make_node("Mul", ["logits", "k"], ["scaled"], name="scale"),
                             helper.make_node("Softmax", ["scaled"], ["y"], name="softmax", axis=1)])
    result = onnx_pfgdf.prune(model, PruneConfig(recover="none", criterion=CriterionConfig("l1"), ratio=0.5))
    assert result.verification.passed
    bad = copy.deepcopy(result.model)
    c3 = _node_by_output(bad, "c3")
    w_init = next(t for t in bad.graph.initializer if t.name == c3.input[1])
    w = numpy_helper.to_array(w_init).copy()
    w[0] *= 1.01  # moves the logits by ~1e-3, not the one-hot output
    w_init.CopyFrom(numpy_helper.from_array(w, w_init.name))
    masked = onnx_pfgdf.rewrite.mask_original(result.normalized, result.plan)
    feeds = seeded_inputs(0)
    np.testing.assert_allclose(run_model(bad, feeds)["y"], run_model(masked, feeds)["y"], atol=1e-6)
    check = onnx_pfgdf.verify(model, bad, result.plan.to_dict())
    assert not check.passed and check.max_rel_error > 1e-4
