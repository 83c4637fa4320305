"""Graphs as real exporters write them (issue 5): every pattern pruned and checked end to end.

Each test builds a small graph with ``onnx.helper`` (input ``x[1,3,8,8]``,
logits ``y``), prunes it at ratio 0.5 with L1 through ``onnx_pfgdf.prune``
(normalize, analyze, plan, rewrite, the library's own verification), then

* asserts which layers were pruned (their group lost channels, the pruned
  model's tensor is narrower) or frozen (with a reason naming the op);
* compares the pruned model with the *masked original* built by
  :func:`taint_masked_original`, an oracle that knows no channel rule: it finds
  the input channels every contracting consumer must lose by running the
  original graph in onnxruntime with the removed filters' outputs perturbed
  (see its docstring), so any op the library mis-handles shows up as a
  mismatch.

Rule tests use ``simplify=False`` so the rule under test sees the graph as
written; the opset matrix at the end runs the default pipeline (onnxsim on).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
import onnx_pfgdf
from builders import CLASSES, GraphBuilder, OpsetBuilder
from onnx_pfgdf.api import PruneConfig, PruneResult
from onnx_pfgdf.criteria import CriterionConfig
from onnx_pfgdf.io import LoadOptions

Y = {"y": [1, CLASSES]}

# --------------------------------------------------------------------------- the taint oracle

#: Perturbation added to the removed filters' outputs; large enough to move any
#: activation (Sigmoid, Clip, HardSigmoid...) that is not saturated everywhere.
TAINT = 20.0


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # No graph rewrites: the clean and the probe graphs must run the same kernels.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def _inputs(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    return {
        vi.name: rng.standard_normal([d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
        for vi in model.graph.input
        if vi.name not in inits
    }


def _dynamic_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from a graph input (everything else is a constant)."""
    inits = {t.name for t in model.graph.initializer}
    dynamic = {vi.name for vi in model.graph.input if vi.name not in inits}
    for node in model.graph.node:
        if any(t in dynamic for t in node.input):
            dynamic.update(o for o in node.output if o)
    return dynamic


def _contracting(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """Indices of nodes that sum over the channels (axis 1) of their input 0.

    Conv/ConvTranspose except depthwise ones (whose output channel c reads input
    channel c only), Gemm without transA, MatMul of a 2-D input by a constant;
    only those reading a computed tensor (not a graph input).
    """
    dynamic = _dynamic_tensors(model)
    inputs = {vi.name for vi in model.graph.input}
    out = []
    for i, node in enumerate(model.graph.node):
        x = node.input[0] if node.input else ""
        if x not in dynamic or x in inputs:  # graph inputs carry no removed channel
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose"):
            if int(attrs.get("group", 1)) == 1 or int(attrs["group"]) != shapes[x][1]:
                out.append(i)
        elif node.op_type == "Gemm" and not int(attrs.get("transA", 0)):
            out.append(i)
        elif node.op_type == "MatMul" and len(shapes[x]) == 2 and node.input[1] not in dynamic:
            out.append(i)
    return out


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``model`` with the tensors ``names`` also graph outputs (element types from shape inference)."""
    out = copy.deepcopy(model)
    inferred = onnx.shape_inference.infer_shapes(out)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(
        helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None) for n in names if n not in present
    )
    return out


def taint_masked_original(original: onnx.ModelProto, plan: Mapping[str, object]) -> onnx.ModelProto:
    """The original with every channel fed by a removed filter zeroed where it is contracted.

    Knows no channel rule.  Three onnxruntime runs of ``original``:

    1. *clean*: record the input of every contracting consumer (see
       :func:`_contracting`);
    2. *probe*: each contracting consumer reads the clean value through a new
       graph input (so a perturbation stops there), and each plan layer's
       output gets ``TAINT + |noise|`` added on its removed channels, then, in
       a second probe, subtracted (a channel clipped at its top by ReLU6 only
       moves downwards); a channel of a contracting input is *tainted* when it
       differs from the clean run in either probe;
    3. the returned model multiplies every contracting input by a 0/1 mask
       that is 0 on the tainted channels.

    Asserts that no graph output is tainted.  A correct pruned model computes
    exactly what the returned model computes.
    """
    layers: Mapping[str, Mapping[str, object]] = plan["layers"]
    feeds = _inputs(original, 0)
    # 1. clean run with every tensor observable
    everything = [o for n in original.graph.node for o in n.output if o]
    clean = _run(_with_outputs(original, everything), feeds)
    shapes = {name: value.shape for name, value in clean.items()} | {k: v.shape for k, v in feeds.items()}
    for t in original.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    contracting = _contracting(original, shapes)
    observed = sorted({original.graph.node[i].input[0] for i in contracting})
    # 2. probe: cut at contracting inputs, perturb removed filters
    tainted: dict[str, np.ndarray] = {}
    for sign in (1.0, -1.0):  # both ways: a channel clipped at its top (ReLU6) only shows going down
        rng = np.random.default_rng(7)
        probe = copy.deepcopy(original)
        nodes: list[onnx.NodeProto] = []
        cut_feeds = dict(feeds)
        for i, node in enumerate(probe.graph.node):
            if i in contracting:
                x = node.input[0]
                node.input[0] = f"{x}__cut"
                if x + "__cut" not in cut_feeds:
                    cut_feeds[x + "__cut"] = clean[x]
                    probe.graph.input.append(helper.make_tensor_value_info(x + "__cut", TensorProto.FLOAT, clean[x].shape))
            nodes.append(node)
            for slot, out in enumerate(node.output):
                if out in layers:
                    keep = np.asarray(layers[out]["keep"], dtype=np.int64)
                    assert clean[out].shape[1] == layers[out]["filters"], f"plan: {out} has {clean[out].shape[1]} filters"
                    noise = np.zeros(clean[out].shape, dtype=np.float32)
                    removed = np.setdiff1d(np.arange(noise.shape[1]), keep)
                    noise[:, removed] = sign * (TAINT + 5.0 * np.abs(rng.standard_normal(noise[:, removed].shape)))
                    node.output[slot] = f"{out}__clean"
                    probe.graph.initializer.append(numpy_helper.from_array(noise, f"{out}__taint"))
                    nodes.append(helper.make_node("Add", [f"{out}__clean", f"{out}__taint"], [out], name=f"{out}__taint"))
        del probe.graph.node[:]
        probe.graph.node.extend(nodes)
        del probe.graph.value_info[:]
        probed = _run(_with_outputs(probe, observed), cut_feeds)
        for o in original.graph.output:
            diff = np.abs(probed[o.name] - clean[o.name])
            assert float(np.max(diff)) <= 1e-6 * (1 + float(np.max(np.abs(clean[o.name])))), \
                f"removed channels reach graph output {o.name}"
        for x in observed:
            diff = np.abs(probed[x].astype(np.float64) - clean[x])
            per_channel = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2))
            hit = per_channel > 1e-6 * (1 + float(np.max(np.abs(clean[x]))))
            tainted[x] = tainted[x] | hit if x in tainted else hit
    assert not layers or any(m.any() for m in tainted.values()), "plan removes channels nobody contracts"
    # 3. masked original
    masked = copy.deepcopy(original)
    nodes = []
    for i, node in enumerate(masked.graph.node):
        x = node.input[0] if node.input else ""
        if i in contracting and tainted[x].any():
            mask = np.ones([1, tainted[x].size] + [1] * (len(shapes[x]) - 2), dtype=np.float32)
            mask[0, tainted[x]] = 0.0
            masked.graph.initializer.append(numpy_helper.from_array(mask, f"{x}__mask{i}"))
            nodes.append(helper.make_node("Mul", [x, f"{x}__mask{i}"], [f"{x}__masked{i}"], name=f"{x}__mask{i}"))
            node.input[0] = f"{x}__masked{i}"
        nodes.append(node)
    del masked.graph.node[:]
    masked.graph.node.extend(nodes)
    return masked


def assert_equals_masked_original(original: onnx.ModelProto, result: PruneResult, samples: int = 2) -> None:
    """The pruned model computes what :func:`taint_masked_original` computes (rtol 1e-4)."""
    masked = taint_masked_original(original, result.plan.to_dict())
    pruned = copy.deepcopy(result.model)
    for seed in range(samples):
        feeds = _inputs(original, 100 + seed)
        want, got = _run(masked, feeds), _run(pruned, feeds)
        assert set(got) == set(want)
        for name, ref in want.items():
            scale = max(float(np.max(np.abs(ref))), 1e-6)
            np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# --------------------------------------------------------------------------- pipeline and assertions


def prune(model: onnx.ModelProto, *, simplify: bool = False, ratio: float = 0.5) -> PruneResult:
    """Prune at ``ratio`` with L1; the library's verification must pass; the oracle must agree."""
    config = PruneConfig(criterion=CriterionConfig("l1"), ratio=ratio, recover="none",
                         load=LoadOptions(simplify=simplify))
    result = onnx_pfgdf.prune(model, config)
    assert result.verification is not None and result.verification.passed, result.verification
    assert_equals_masked_original(model, result)
    return result


def _channels(model: onnx.ModelProto, tensor: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == tensor:
            return vi.type.tensor_type.shape.dim[1].dim_value
    raise AssertionError(f"no shape for {tensor}")


def assert_pruned(result: PruneResult, *outputs: str) -> None:
    """Each named layer output is in a prunable group that lost channels, and is narrower now."""
    for name in outputs:
        group = result.plan.analysis.group_of_output(name)
        assert group is not None and group.prunable, (name, group)
        assert group.id in result.plan.keep, f"{name} kept every channel"
        assert _channels(result.model, name) == len(result.plan.keep[group.id]) < group.channels


def assert_coupled(result: PruneResult, *outputs: str) -> None:
    """The named layer outputs are one group (they keep the same channels)."""
    analysis = result.plan.analysis
    ids = {analysis.group_of_output(name).id for name in outputs}
    assert len(ids) == 1, {name: analysis.group_of_output(name) for name in outputs}


def assert_frozen(result: PruneResult, output: str, *words: str) -> None:
    """Every group on ``output``'s channels is frozen, one reason holding all ``words``; nothing lost."""
    analysis = result.plan.analysis
    groups = [analysis.groups[seg.group] for seg in analysis.layouts[output]]
    assert groups and all(group.frozen for group in groups), (output, groups)
    reasons = [reason for group in groups for reason in group.frozen]
    assert any(all(w in reason for w in words) for reason in reasons), reasons
    assert not any(group.id in result.plan.keep for group in groups)
    assert _channels(result.model, output) == _channels(result.normalized, output)


def ints(g: GraphBuilder, values: list[int], name: str | None = None) -> str:
    name = name or f"i{len(g.inits)}"
    g.inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def scalar(g: GraphBuilder, value: float) -> str:
    return g.const(f"s{len(g.inits)}", np.float32(value))


def test_taint_oracle_catches_a_channel_shuffle_passed_through() -> None:
    """The oracle is not vacuous: a plan whose removed channels get shuffled is refused.

    x -> Conv c1(3->4) -> Transpose(0,1,3,2) -> Conv c2(4->6) -> Relu -> head, plan prunes c1;
    the same graph with the channels reversed by a Slice(step -1) taints channels the
    rewrite would not remove, so the masked original differs from the honest mask.
    """
    g = GraphBuilder(40)
    h = g.node("Slice", [g.conv("x", 3, 4, "c1"), ints(g, [-1]), ints(g, [-(2**62)]), ints(g, [1]), ints(g, [-1])])
    g.head(g.relu(g.conv(h, 4, 6, "c2")), 6)
    model = g.model(Y)
    plan = {"format": "onnx-pfgdf-plan", "version": 1, "layers": {"c1": {"node": "n", "filters": 4, "keep": [0, 1]}}}
    masked = taint_masked_original(model, plan)
    mask = next(numpy_helper.to_array(t) for t in masked.graph.initializer if "__mask" in t.name)
    assert mask.ravel().tolist() == [0.0, 0.0, 1.0, 1.0]  # reversed: channels 2, 3 of c1 land on 0, 1


# --------------------------------------------------------------------------- batch normalization


@pytest.mark.parametrize("form", ["unfused", "fused", "mul_add_4d", "sub_div_unsqueeze_attr", "constant_unsqueeze"])
def test_batch_norm_forms(form: str) -> None:
    """Conv -> BN in the forms exporters write, then Relu -> Conv c2(6->8) -> Relu -> head::

        unfused:                 Conv c1(3->6) -> BatchNormalization
        fused:                   Conv c1(3->6, bias)                      (BN folded by the exporter)
        mul_add_4d:              Conv c1 -> Mul(k[1,6,1,1]) -> Add(b[1,6,1,1])
        sub_div_unsqueeze_attr:  Conv c1 -> Sub(Unsqueeze(mean)) -> Div(Unsqueeze(std)) -> Mul(gamma) -> Add(beta)
                                 (opset 11, Unsqueeze axes as attribute, constants [6] -> [6,1,1])
        constant_unsqueeze:      Conv c1 -> Mul(Unsqueeze(Constant k)) -> Add(Unsqueeze(Constant b)) (opset 13)
    """
    opset = 11 if form == "sub_div_unsqueeze_attr" else 13
    g = OpsetBuilder(41, opset)
    c1 = g.conv("x", 3, 6, "c1", bias=form == "fused")
    if form == "unfused":
        h = g.bn(c1, 6)
    elif form == "fused":
        h = c1
    elif form == "mul_add_4d":
        h = g.node("Mul", [c1, g.const("k", g.rng.uniform(0.5, 1.5, (1, 6, 1, 1)))])
        h = g.node("Add", [h, g.const("b", g.rng.normal(0.0, 0.1, (1, 6, 1, 1)))])
    elif form == "sub_div_unsqueeze_attr":
        params = {"mean": g.rng.normal(0.0, 0.1, 6), "std": g.rng.uniform(0.5, 1.5, 6),
                  "gamma": g.rng.uniform(0.5, 1.5, 6), "beta": g.rng.normal(0.0, 0.1, 6)}
        p = {k: g.unsqueeze(g.const(k, v), [1, 2]) for k, v in params.items()}
        h = g.node("Div", [g.node("Sub", [c1, p["mean"]]), p["std"]])
        h = g.node("Add", [g.node("Mul", [h, p["gamma"]]), p["beta"]])
    else:
        for name, value in (("k", g.rng.uniform(0.5, 1.5, 6)), ("b", g.rng.normal(0.0, 0.1, 6))):
            g.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
                value.astype(np.float32), name)))
        h = g.node("Mul", [c1, g.unsqueeze("k", [1, 2])])
        h = g.node("Add", [h, g.unsqueeze("b", [1, 2])])
    g.head(g.relu(g.conv(g.relu(h), 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


# --------------------------------------------------------------------------- squeeze-and-excitation


@pytest.mark.parametrize(
    "squeeze, excite, gate",
    [
        ("GlobalAveragePool", "Conv", "HardSigmoid"),
        ("GlobalAveragePool+Flatten", "Gemm", "Sigmoid"),
        ("ReduceMean", "Gemm", "HardSigmoid"),
        ("ReduceMean+keepdims", "Conv", "Sigmoid"),
    ],
)
def test_squeeze_and_excitation(squeeze: str, excite: str, gate: str) -> None:
    """SE block, the gate's producer coupled with the trunk by the Mul::

        x -> Conv stem(3->8) -> BN -> Relu = t -> squeeze -> excite se1(8->4) -> Relu -> excite se2(4->8)
          -> gate -> (back to [1,8,1,1] after Gemm: Reshape or Unsqueeze) -> Mul(gate, t)
          -> Conv c2(8->6) -> Relu -> head                  groups {stem, se2}, {se1}, {c2}
    """
    g = OpsetBuilder(42, 13)
    t = g.cbr("x", 3, 8, "stem")
    if squeeze == "GlobalAveragePool":
        s = g.node("GlobalAveragePool", [t])
    elif squeeze == "GlobalAveragePool+Flatten":
        s = g.node("Flatten", [g.node("GlobalAveragePool", [t])], axis=1)
    else:
        s = g.reduce_mean(t, [2, 3], keepdims=int(squeeze.endswith("keepdims")))
    if excite == "Conv":
        e = g.conv(g.relu(g.conv(s, 8, 4, "se1", k=1)), 4, 8, "se2", k=1)
    else:
        e = g.gemm(g.relu(g.gemm(s, 8, 4, "se1")), 4, 8, "se2")
    e = g.node(gate, [e], **({"alpha": 1.0 / 6, "beta": 0.5} if gate == "HardSigmoid" else {}))
    if excite == "Gemm":
        e = g.node("Reshape", [e, ints(g, [1, -1, 1, 1])]) if "Flatten" in squeeze else g.unsqueeze(e, [2, 3])
    h = g.relu(g.conv(g.node("Mul", [e, t]), 8, 6, "c2"))
    g.head(h, 6)
    result = prune(g.model(Y))
    assert_pruned(result, "stem", "se1", "c2")
    assert_coupled(result, "stem", "se2")


# --------------------------------------------------------------------------- decomposed activations


def _act(g: OpsetBuilder, x: str, kind: str) -> str:
    """``kind`` applied to ``x`` as an exporter writes it."""
    if kind == "hardswish_clip":  # x * Clip(x + 3, 0, 6) / 6
        return g.node("Div", [g.node("Mul", [x, g.clip(g.node("Add", [x, scalar(g, 3.0)]), 0.0, 6.0)]), scalar(g, 6.0)])
    if kind == "hardswish_hardsigmoid":  # x * HardSigmoid(x)
        return g.node("Mul", [x, g.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)])
    if kind == "silu":
        return g.node("Mul", [x, g.node("Sigmoid", [x])])
    if kind == "mish":  # x * tanh(softplus(x))
        return g.node("Mul", [x, g.node("Tanh", [g.node("Softplus", [x])])])
    if kind == "gelu_erf":  # x * 0.5 * (1 + erf(x / sqrt 2))
        e = g.node("Add", [g.node("Erf", [g.node("Div", [x, scalar(g, np.sqrt(2.0))])]), scalar(g, 1.0)])
        return g.node("Mul", [g.node("Mul", [x, e]), scalar(g, 0.5)])
    if kind == "gelu_tanh":  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
        cube = g.node("Mul", [g.node("Pow", [x, scalar(g, 3.0)]), scalar(g, 0.044715)])
        inner = g.node("Mul", [g.node("Add", [x, cube]), scalar(g, np.sqrt(2.0 / np.pi))])
        half = g.node("Mul", [x, scalar(g, 0.5)])
        return g.node("Mul", [half, g.node("Add", [g.node("Tanh", [inner]), scalar(g, 1.0)])])
    return g.node(kind, [x])  # HardSwish (14), Mish (18), Gelu (20)


@pytest.mark.parametrize(
    "kind",
    ["hardswish_clip", "hardswish_hardsigmoid", "silu", "mish", "gelu_erf", "gelu_tanh", "HardSwish", "Mish", "Gelu"],
)
def test_decomposed_activations(kind: str) -> None:
    """x -> Conv c1(3->6) -> act -> Conv c2(6->8) -> act -> head (opset 20); both convs pruned."""
    g = OpsetBuilder(43, 20)
    h = _act(g, g.conv("x", 3, 6, "c1"), kind)
    g.head(_act(g, g.conv(h, 6, 8, "c2"), kind), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


def test_hardswish_with_clip_attributes_at_opset_9() -> None:
    """Opset 9 HardSwish: x * Clip(x + 3, min=0, max=6 attributes) / 6, between c1(3->6) and c2(6->8)."""
    g = OpsetBuilder(44, 9)
    h = _act(g, g.conv("x", 3, 6, "c1"), "hardswish_clip")
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


# --------------------------------------------------------------------------- layers and resampling


def test_conv_transpose_weight_axes_swapped() -> None:
    """Decoder: ConvTranspose weights are [C_in, C_out, kH, kW]::

        x -> Conv c1(3->6, s2) -> Relu [1,6,4,4] -> ConvTranspose up(6->5, k2, s2, bias) [1,5,8,8]
          -> BN -> Relu -> Conv c3(5->8) -> Relu -> head
    """
    g = GraphBuilder(45)
    h = g.relu(g.conv("x", 3, 6, "c1", stride=2))
    w = g.const("up.W", g.rng.standard_normal((6, 5, 2, 2)) * np.sqrt(2.0 / 24))
    h = g.node("ConvTranspose", [h, w, g.const("up.B", g.rng.normal(0, 0.1, 5))], "up", kernel_shape=[2, 2],
               strides=[2, 2])
    h = g.relu(g.bn(h, 5))
    g.head(g.relu(g.conv(h, 5, 8, "c3")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "up", "c3")
    up = next(n for n in result.model.graph.node if n.output[0] == "up")
    weight = next(t for t in result.model.graph.initializer if t.name == up.input[1])
    assert list(weight.dims) == [3, 3, 2, 2]  # round(0.5 * 6) and round(0.5 * 5) filters removed


@pytest.mark.parametrize("opset", [9, 10, 11, 13, 19])
def test_resize_and_upsample_with_scales(opset: int) -> None:
    """x -> Conv c1(3->6, s2) -> Relu -> Upsample (9) / Resize (10+) x2 -> Conv c2(6->8) -> Relu -> head."""
    g = OpsetBuilder(46, opset)
    h = g.upsample(g.relu(g.conv("x", 3, 6, "c1", stride=2)), 2.0)
    g.head(g.relu(g.conv(h, 6, 8, "c2")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


@pytest.mark.parametrize("opset, mode", [(9, "constant"), (10, "reflect"), (11, "constant"), (18, "edge")])
def test_pad_attribute_and_input_forms(opset: int, mode: str) -> None:
    """x -> Conv c1(3->6) -> Relu -> Pad(H, W; ``pads`` attribute <11, input >=11) -> Conv c2(6->8, no pads) -> head."""
    g = OpsetBuilder(47, opset)
    h = g.pad(g.relu(g.conv("x", 3, 6, "c1")), [0, 0, 1, 1, 0, 0, 1, 1], mode=mode)
    w = g.const("c2.W", g.rng.standard_normal((8, 6, 3, 3)) * np.sqrt(2.0 / 54))
    g.head(g.relu(g.node("Conv", [h, w], "c2", kernel_shape=[3, 3])), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2")


def test_pad_with_axes_input_and_on_channels() -> None:
    """Opset 18 Pad with an ``axes`` input, and a Pad that adds channels (freezes)::

        x -> Conv c1(3->6) -> Relu -> Pad(axes [2,3], pads [1,1,1,1]) -> Conv c2(6->8, no pads) -> Relu
          -> Pad(channels +2) [1,10,8,8] -> Conv c3(10->6) -> Relu -> head
    """
    g = OpsetBuilder(48, 18)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    h = g.node("Pad", [h, ints(g, [1, 1, 1, 1]), "", ints(g, [2, 3])])
    w = g.const("c2.W", g.rng.standard_normal((8, 6, 3, 3)) * np.sqrt(2.0 / 54))
    h = g.relu(g.node("Conv", [h, w], "c2", kernel_shape=[3, 3]))
    h = g.node("Pad", [h, ints(g, [0, 0, 0, 0, 0, 2, 0, 0])])
    g.head(g.relu(g.conv(h, 10, 6, "c3")), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c3")
    assert_frozen(result, "c2", "Pad", "pads the batch or channel axis")


# --------------------------------------------------------------------------- slicing and merging channels


@pytest.mark.parametrize(
    "axis, starts, ends",
    [(2, 0, 4), (1, 4, 8), (1, 0, 4), (1, -4, 8)],
)
def test_slice_with_attributes_at_opset_9(axis: int, starts: int, ends: int) -> None:
    """Opset 9 Slice keeps starts/ends/axes in attributes, which the rewrite moves like inputs::

        x -> Conv a(3->4) -> Relu --Concat [8]-- Conv b(3->4) -> Relu
          -> Slice(axis ``axis``, starts:ends) -> Conv c(->6) -> Relu -> head

    Every layer prunes, whether the slice cuts channels or space, and a bound
    counted from the end becomes a count of kept channels.
    """
    g = OpsetBuilder(49, 9)
    h = g.node("Concat", [g.relu(g.conv("x", 3, 4, "a")), g.relu(g.conv("x", 3, 4, "b"))], axis=1)
    h = g.node("Slice", [h], starts=[starts], ends=[ends], axes=[axis])
    g.head(g.relu(g.conv(h, 4 if axis == 1 else 8, 6, "c")), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "a", "b", "c")
    node = next(n for n in result.model.graph.node if n.op_type == "Slice")
    bounds = {a.name: list(a.ints) for a in node.attribute if a.name in ("starts", "ends")}
    if axis == 1:
        kept_a = len(result.plan.keep[result.plan.analysis.group_of_output("a").id])
        kept_b = len(result.plan.keep[result.plan.analysis.group_of_output("b").id])
        expected = {(4, 8): (kept_a, kept_a + kept_b), (0, 4): (0, kept_a), (-4, 8): (kept_a, kept_a + kept_b)}
        assert (bounds["starts"][0], bounds["ends"][0]) == expected[(starts, ends)]


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_split_without_sizes_gets_explicit_sizes(opset: int) -> None:
    """Split into equal parts (no sizes; ``num_outputs`` at 18) of one conv's channels::

        x -> Conv c1(3->8) -> Relu -> Split(2 parts) -> Conv pa(4->5), Conv pb(4->5) -> Add -> Relu -> head

    The parts cut c1's group mid-way, so c1 freezes; a Split of a Concat
    (below) is cut at its segments and prunes, with sizes written out.
    """
    g = OpsetBuilder(50, opset)
    h = g.relu(g.conv("x", 3, 8, "c1"))
    attrs = {"num_outputs": 2} if opset >= 18 else {}
    g.nodes.append(helper.make_node("Split", [h], ["s0", "s1"], name="split", axis=1, **attrs))
    g.head(g.relu(g.node("Add", [g.conv("s0", 4, 5, "pa"), g.conv("s1", 4, 5, "pb")])), 5)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "Split", "mid-way")
    assert_pruned(result, "pa")
    assert_coupled(result, "pa", "pb")


def test_slice_attribute_bounds_move() -> None:
    """Concat(a[4], b[4]) -> Slice(channels 4:8, attributes, opset 9) -> Conv c: the bounds follow a's pruning."""
    g = OpsetBuilder(61, 9)
    h = g.node("Concat", [g.relu(g.conv("x", 3, 4, "a")), g.relu(g.conv("x", 3, 4, "b"))], axis=1)
    h = g.node("Slice", [h], starts=[4], ends=[8], axes=[1])
    g.head(g.relu(g.conv(h, 4, 6, "c")), 6)
    assert_pruned(prune(g.model(Y)), "a", "b", "c")


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_without_sizes_at_segment_boundaries(opset: int) -> None:
    """Concat(a[4], b[4]) -> Split(2 equal parts; num_outputs=2 at 18) -> Conv pa(4->5), Conv pb(4->5) -> Add -> head.

    The rewrite writes the kept sizes out: a ``split`` attribute before opset
    13, a sizes input from 13 on (``num_outputs`` dropped).
    """
    g = OpsetBuilder(62, opset)
    h = g.node("Concat", [g.relu(g.conv("x", 3, 4, "a")), g.relu(g.conv("x", 3, 4, "b"))], axis=1)
    attrs = {"num_outputs": 2} if opset >= 18 else {}
    g.nodes.append(helper.make_node("Split", [h], ["s0", "s1"], name="split", axis=1, **attrs))
    g.head(g.relu(g.node("Add", [g.conv("s0", 4, 5, "pa"), g.conv("s1", 4, 5, "pb")])), 5)
    result = prune(g.model(Y))
    assert_pruned(result, "a", "b", "pa")
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    assert not any(a.name == "num_outputs" for a in split.attribute)
    if opset < 13:
        sizes = list(next(a for a in split.attribute if a.name == "split").ints)
    else:
        sizes = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == split.input[1])).tolist()
    assert sizes == [len(result.plan.keep[result.plan.analysis.group_of_output(n).id]) for n in ("a", "b")]


def test_sum_of_many_inputs_at_opset_9() -> None:
    """Old exporters merge branches with one Sum::

        x -> Conv b0(3->6), Conv b1(3->6) -> BN, Conv b2(3->6) -> Relu -> Sum -> Relu -> Conv c(6->8) -> Relu -> head
    """
    g = OpsetBuilder(51, 9)
    branches = [g.conv("x", 3, 6, "b0"), g.bn(g.conv("x", 3, 6, "b1"), 6), g.relu(g.conv("x", 3, 6, "b2"))]
    h = g.relu(g.node("Sum", branches))
    g.head(g.relu(g.conv(h, 6, 8, "c")), 8)
    result = prune(g.model(Y))
    assert_pruned(result, "b0", "c")
    assert_coupled(result, "b0", "b1", "b2")


def test_concat_chain_dense_block() -> None:
    """DenseNet block: each layer reads the concatenation of everything before it::

        x -> Conv c0(3->4) = f0
        f0 -> BN -> Relu -> Conv c1(4->3) = f1;   cat1 = Concat(f0, f1) [7]
        cat1 -> BN -> Relu -> Conv c2(7->3) = f2; cat2 = Concat(cat1, f2) [10]
        cat2 -> BN -> Relu -> Conv t(10->6, 1x1) -> AveragePool 2x2 -> head

    Groups: {c0: 4}, {c1: 3}, {c2: 3}, {t: 6}.
    """
    g = GraphBuilder(52)
    f0 = g.conv("x", 3, 4, "c0")
    f1 = g.conv(g.relu(g.bn(f0, 4)), 4, 3, "c1")
    cat1 = g.node("Concat", [f0, f1], axis=1)
    f2 = g.conv(g.relu(g.bn(cat1, 7)), 7, 3, "c2")
    cat2 = g.node("Concat", [cat1, f2], axis=1)
    h = g.conv(g.relu(g.bn(cat2, 10)), 10, 6, "t", k=1)
    g.head(g.node("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2]), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "c0", "c1", "c2", "t")


# --------------------------------------------------------------------------- ops that must freeze


def test_channel_shuffle_freezes() -> None:
    """ShuffleNet channel shuffle with plain 1x1 convs around it::

        x -> Conv c1(3->8) -> Relu -> Reshape [1,2,4,8,8] -> Transpose(0,2,1,3,4) -> Reshape [1,8,8,8]
          -> Conv c2(8->6) -> Relu -> head
    """
    g = GraphBuilder(53)
    h = g.node("Reshape", [g.relu(g.conv("x", 3, 8, "c1")), ints(g, [1, 2, 4, 8, 8])])
    h = g.node("Reshape", [g.node("Transpose", [h], perm=[0, 2, 1, 3, 4]), ints(g, [1, 8, 8, 8])])
    g.head(g.relu(g.conv(h, 8, 6, "c2")), 6)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "Reshape", "reshapes across the channel axis")
    assert_pruned(result, "c2")


def test_depth_to_space_freezes() -> None:
    """Pixel shuffle: x -> Conv c1(3->8) -> DepthToSpace(2) [1,2,16,16] -> Conv c2(2->6) -> Relu -> head."""
    g = GraphBuilder(54)
    h = g.node("DepthToSpace", [g.conv("x", 3, 8, "c1")], blocksize=2)
    g.head(g.relu(g.conv(h, 2, 6, "c2")), 6)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "DepthToSpace", "no channel rule")
    assert_pruned(result, "c2")


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_consumer_freezes(op: str) -> None:
    """Conv features fed to a recurrent layer, directly and CRNN-style::

        x -> Conv c1(3->6) -> Relu -> Reshape [1,6,64] -> op(hidden 5) -> Y_h [1,6,5] -> Flatten -> Gemm y
        x -> Conv c2(3->4) -> Relu -> ReduceMean(H) [1,4,8] -> Transpose(2,0,1) [8,1,4] -> op(hidden 5)
          -> Y_h [1,1,5] -> Flatten -> Gemm z
    """
    g = GraphBuilder(55)
    gates = 4 if op == "LSTM" else 3

    def recurrent(x: str, features: int, tag: str) -> str:
        w = g.const(f"{tag}.W", g.rng.standard_normal((1, gates * 5, features)) * 0.2)
        r = g.const(f"{tag}.R", g.rng.standard_normal((1, gates * 5, 5)) * 0.2)
        g.nodes.append(helper.make_node(op, [x, w, r], ["", f"{tag}_h"], name=f"{op}_{tag}", hidden_size=5))
        return f"{tag}_h"

    stem = g.relu(g.conv("x", 3, 5, "c0"))  # prunable: only the layers below are frozen
    h = g.node("Reshape", [g.relu(g.conv(stem, 5, 6, "c1")), ints(g, [1, 6, 64])])
    g.gemm(g.node("Flatten", [recurrent(h, 64, "direct")], axis=1), 30, CLASSES, "y")
    h = g.node("ReduceMean", [g.relu(g.conv(stem, 5, 4, "c2"))], axes=[2], keepdims=0)
    h = g.node("Transpose", [h], perm=[2, 0, 1])
    g.gemm(g.node("Flatten", [recurrent(h, 4, "crnn")], axis=1), 5, CLASSES, "z")
    result = prune(g.model({"y": [1, CLASSES], "z": [1, CLASSES]}))
    assert_frozen(result, "c1", f"{op} node", "no channel rule")
    assert_frozen(result, "c2", "Transpose", "moves the channel axis")
    assert_pruned(result, "c0")


def test_attention_consumers_freeze() -> None:
    """Channels used as tokens by attention (opset 23)::

        x -> Conv c1(3->6) -> Relu -> Reshape [1,6,64] = q -> Attention(q, q, q; 1 head) [1,6,64]
          -> Reshape [1,6,8,8] -> Conv c2(6->8) -> Relu -> head
        x -> Conv c3(3->4) -> Relu -> Reshape [1,4,64] = v -> MatMul(v, Transpose(v)) [1,4,4] (channel affinity)
          -> Softmax -> MatMul(., v) [1,4,64] -> Reshape [1,4,8,8] -> Conv c4(4->8) -> Add(c2 branch) -> ...
    """
    g = OpsetBuilder(56, 23)
    q = g.node("Reshape", [g.relu(g.conv("x", 3, 6, "c1")), ints(g, [1, 6, 64])])
    a = g.node("Attention", [q, q, q], q_num_heads=1, kv_num_heads=1)
    h2 = g.relu(g.conv(g.node("Reshape", [a, ints(g, [1, 6, 8, 8])]), 6, 8, "c2"))
    v = g.node("Reshape", [g.relu(g.conv("x", 3, 4, "c3")), ints(g, [1, 4, 64])])
    affinity = g.node("Softmax", [g.node("MatMul", [v, g.node("Transpose", [v], perm=[0, 2, 1])])], axis=-1)
    h4 = g.node("Reshape", [g.node("MatMul", [affinity, v]), ints(g, [1, 4, 8, 8])])
    g.head(g.relu(g.node("Add", [g.conv(h4, 4, 8, "c4"), h2])), 8)
    result = prune(g.model(Y))
    assert_frozen(result, "c1", "Attention node", "no channel rule")
    assert_frozen(result, "c3", "MatMul")
    assert_pruned(result, "c2")
    assert_coupled(result, "c2", "c4")


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape", "Squeeze", "ReduceMean"])
def test_matmul_head(flatten: str) -> None:
    """Linear layers exported as MatMul + Add, after the several ways of dropping H, W::

        x -> Conv c1(3->6) -> BN -> Relu -> GlobalAveragePool [1,6,1,1] -> (Flatten | Reshape [1,-1] |
          Squeeze(2,3)) [1,6]   (or ReduceMean(2,3, keepdims 0) straight from the Relu)
          -> MatMul(W1[6,12]) -> Add(b1) -> Relu -> MatMul(W2[12,10]) -> Add(b2) = y
    """
    g = OpsetBuilder(57, 13)
    h = g.cbr("x", 3, 6, "c1")
    if flatten == "ReduceMean":
        h = g.reduce_mean(h, [2, 3], keepdims=0)
    else:
        h = g.node("GlobalAveragePool", [h])
        if flatten == "Flatten":
            h = g.node("Flatten", [h], axis=1)
        elif flatten == "Reshape":
            h = g.node("Reshape", [h, ints(g, [1, -1])])
        else:
            h = g.squeeze(h, [2, 3])
    h = g.node("MatMul", [h, g.const("W1", g.rng.standard_normal((6, 12)) * np.sqrt(2 / 6))], "fc1")
    h = g.relu(g.node("Add", [h, g.const("b1", g.rng.normal(0, 0.1, 12))]))
    h = g.node("MatMul", [h, g.const("W2", g.rng.standard_normal((12, CLASSES)) * np.sqrt(2 / 12))])
    g.node("Add", [h, g.const("b2", g.rng.normal(0, 0.1, CLASSES))], "y")
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "fc1")


def test_pytorch_view_flatten_with_shape_ops() -> None:
    """``x.view(x.size(0), -1)`` as PyTorch exports it at opset 9::

        x -> Conv c1(3->6) -> Relu -> MaxPool 2x2 = h [1,6,4,4]
        h -> Shape -> Gather(0) -> Unsqueeze(0) --Concat(.., [-1]) -> Reshape(h, .) [1,96] -> Gemm y(96->10)

    Before opset 13 shape inference does not propagate the computed shape; with the
    input dims fixed, normalize folds the chain (onnxsim does too), so c1 prunes either way.
    """
    g = OpsetBuilder(58, 9)
    h = g.node("MaxPool", [g.relu(g.conv("x", 3, 6, "c1"))], kernel_shape=[2, 2], strides=[2, 2])
    n = g.unsqueeze(g.node("Gather", [g.node("Shape", [h]), g.ints(0, "zero")], axis=0), [0])
    shape = g.node("Concat", [n, ints(g, [-1], "minus_one")], axis=0)
    g.gemm(g.node("Reshape", [h, shape]), 96, CLASSES, "y")
    model = g.model(Y)
    for simplify in (True, False):
        result = prune(model, simplify=simplify)
        assert_pruned(result, "c1")
        assert not any(n.op_type == "Shape" for n in result.model.graph.node)


@pytest.mark.parametrize("pooled", [True, False])
def test_dynamo_view_with_allowzero(pooled: bool) -> None:
    """The dynamo exporter writes every ``view``/``flatten`` as Reshape with ``allowzero=1``::

        x -> Conv c1(3->6) -> Relu [1,6,8,8] -> (ReduceMean(-1,-2, keepdims 1) [1,6,1,1] -> Reshape [1,6]
                                              | Reshape [1,384]) (allowzero=1) -> Gemm y

    ``allowzero`` only changes what a 0 in the shape means; without one the
    Reshape flattens like any other and c1 prunes.
    """
    g = OpsetBuilder(63, 18)
    h = g.relu(g.conv("x", 3, 6, "c1"))
    if pooled:
        h = g.reduce_mean(h, [-1, -2])
    features = 6 if pooled else 6 * 8 * 8
    g.gemm(g.node("Reshape", [h, ints(g, [1, features])], allowzero=1), features, CLASSES, "y")
    result = prune(g.model(Y))
    assert_pruned(result, "c1")


# --------------------------------------------------------------------------- how weights are stored


def _strip_names(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        node.name = ""


def test_weights_in_constant_nodes_without_node_names() -> None:
    """TF/Caffe2 style: every weight is a Constant node and no node has a name (resnet_blocks)."""
    case = builders.resnet_blocks()
    model = copy.deepcopy(case.model)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _strip_names(model)
    onnx.checker.check_model(model, full_check=True)
    result = prune(model)
    for members, _ in case.groups:
        assert_pruned(result, *members)
        assert_coupled(result, *members)
    replay = onnx_pfgdf.apply_plan(model, result.plan.to_dict(), PruneConfig(recover="none",
                                   load=LoadOptions(simplify=False)))
    assert replay.model.SerializeToString() == result.model.SerializeToString()


def test_shared_initializers_across_groups() -> None:
    """Exporters de-duplicate equal constants; layers of different groups then read one tensor::

        x -> Conv c1(3->6) -> BN(ones, zeros, zeros, ones) -> Relu -> Conv c2(6->6) -> BN(the same four) -> Relu
          -> Mul(k[6,1,1]) -> Conv c3(6->6) -> Mul(k) -> Relu -> head           (k shared as well)

    Each group keeps other channels, so each use needs its own slice of the shared tensors.
    """
    g = GraphBuilder(59)
    bn = [g.const("ones", np.ones(6)), g.const("zeros", np.zeros(6)), "zeros", "ones"]
    g.const("k", g.rng.uniform(0.5, 1.5, (6, 1, 1)))
    h = g.relu(g.node("BatchNormalization", [g.conv("x", 3, 6, "c1"), *bn]))
    h = g.relu(g.node("BatchNormalization", [g.conv(h, 6, 6, "c2"), *bn]))
    h = g.node("Mul", [g.conv(g.node("Mul", [h, "k"]), 6, 6, "c3"), "k"])
    g.head(g.relu(h), 6)
    result = prune(g.model(Y))
    assert_pruned(result, "c1", "c2", "c3")
    keeps = {name: result.plan.keep[result.plan.analysis.group_of_output(name).id].tolist() for name in ("c1", "c2")}
    assert keeps["c1"] != keeps["c2"], "test needs groups that keep different channels"


def test_initializers_listed_as_graph_inputs() -> None:
    """Old exporters (IR 3/4, opset 9) also list every initializer as a graph input (se_block weights)."""
    g = OpsetBuilder(60, 9)
    t = g.cbr("x", 3, 8, "stem")
    gate = g.node("Sigmoid", [g.conv(g.relu(g.conv(g.node("GlobalAveragePool", [t]), 8, 4, "se1", k=1)), 4, 8,
                                     "se2", k=1)])
    g.head(g.relu(g.conv(g.node("Mul", [t, gate]), 8, 6, "c2")), 6)
    model = g.model(Y)
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    model.ir_version = 3
    onnx.checker.check_model(model)
    result = prune(model)
    assert_pruned(result, "stem", "se1", "c2")
    assert_coupled(result, "stem", "se2")
    assert {i.name for i in result.model.graph.input} == {"x"}


# --------------------------------------------------------------------------- opset matrix


@pytest.mark.parametrize("opset", builders.OPSET_MATRIX)
@pytest.mark.parametrize("build", builders.OPSET_BUILDERS, ids=lambda b: b.__name__)
def test_opset_matrix(build, opset: int) -> None:
    """Representative graphs written at each opset, pruned by the default pipeline (onnxsim on)."""
    case = build(opset)
    result = prune(case.model, simplify=True)
    for members, _ in case.groups:
        assert_pruned(result, *members)
        assert_coupled(result, *members)
    assert not result.plan.analysis.group_of_output("y").prunable
    for dw, carrier in case.dw_convs.items():
        node = next(n for n in result.model.graph.node if n.output[0] == dw)
        group = next(a.i for a in node.attribute if a.name == "group")
        assert group == _channels(result.model, carrier) == _channels(result.model, dw)
