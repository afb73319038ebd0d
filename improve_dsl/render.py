"""Rendering: typed IR → one standalone, black-formatted PyTorch training script.

Templates (``templates/``) only loop and branch over the IR and over the ``ScriptContext``
computed here; every value that reaches code goes through the strict ``literal`` filter.
Jinja's and black's errors become ``RenderError`` at one boundary, ``_render``/``_format``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import black
import jinja2
from black.mode import Mode, TargetVersion
from black.parsing import InvalidInput

from . import registry
from .code_literals import (
    RenderError,
    comment_text,
    docstring_text,
    identifier,
    literal,
    module_name,
)
from .ir import Op, Spec
from .paths import templates_dir, user_cache_dir
from .registry import ParamValue

SKELETON = "train.py.jinja"
BLACK_MODE = Mode(target_versions={TargetVersion.PY310}, line_length=100)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja environment: strict undefined, block-trimming, our filters.

    Compiled templates are kept in the user's private cache folder (Jinja checks each
    against its source), so a fresh process does not compile the templates again.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # the output is Python, not HTML; literals are escaped by `literal`
    )
    env.filters["literal"] = literal
    env.filters["identifier"] = identifier
    env.filters["module"] = module_name
    env.filters["docstring"] = docstring_text
    env.filters["comment"] = comment_text
    return env


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    cache = user_cache_dir()
    if cache is None:
        return None
    try:
        (cache / "templates").mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(cache / "templates"))


# ---------------------------------------------------------------- the context


@dataclass(frozen=True)
class Constant:
    """A module-level hyperparameter: ``NAME = literal  # comment``."""

    name: str
    value: ParamValue
    comment: str = ""

    @property
    def inline(self) -> bool:
        """Whether the comment fits after the value on one line."""
        line = f"{self.name} = {literal(self.value)}  # {self.comment}"
        return len(line) <= BLACK_MODE.line_length


@dataclass(frozen=True)
class ConstantGroup:
    """The constants one spec block sets."""

    block: str
    constants: tuple[Constant, ...]


@dataclass(frozen=True)
class OpCall:
    """A call of an augment or TTA function with the op's parameters as keyword arguments."""

    function: str
    arguments: tuple[tuple[str, ParamValue], ...]
    mixes_labels: bool = False


@dataclass(frozen=True)
class Import:
    """``import module [as alias]`` or ``from module import names``."""

    module: str
    names: tuple[str, ...] = ()
    alias: str | None = None

    @property
    def third_party(self) -> bool:
        return self.module.split(".")[0] in ("numpy", "torch")


@dataclass(frozen=True)
class ScriptContext:
    """Everything the templates need beyond the IR, computed once here."""

    spec_path: str
    constants: tuple[ConstantGroup, ...]
    source_template: str
    validation_template: str
    in_memory: bool  # tensors on the device (every source but image_folder)
    takes_data_root: bool  # the source reads files from a folder (--data-root overrides it)
    helper_templates: tuple[str, ...]
    augment_templates: tuple[str, ...]
    augment_calls: tuple[OpCall, ...]
    mixes_labels: bool
    # Whether --augment per-epoch can augment the whole training split once per epoch: the
    # spec has augment ops and none of them mixes labels (soft targets belong to a batch).
    augments_split: bool
    autocasts: bool  # the spec's precision may train under autocast (--batchnorm-fp32 applies)
    optimizer_template: str
    schedule_template: str
    schedule_arguments: tuple[str, ...] | None  # lr_factor's after `step`; None: no scheduler
    loss_template: str
    ema_template: str | None
    graph_blocker: str | None  # why the step cannot be one CUDA graph; None: it can
    tta_templates: tuple[str, ...]
    tta_calls: tuple[OpCall, ...]
    imports: tuple[Import, ...]
    dataset: registry.DatasetFacts | None  # the built-in dataset's facts (class names, files)
    # For a ``layers`` list: whether the input of each layer is a vector (after flatten or
    # linear, kept by activations and dropout) rather than images, and whether the last
    # layer's output is, so a linear layer and the classifier flatten only images.
    layer_input_flat: tuple[bool, ...]
    layers_output_flat: bool


# Constant names that are not simply the parameter's name in capitals.
_CONSTANT_NAMES = {
    ("source", "root"): "DATA_ROOT",
    ("validation", "fraction"): "VALIDATION_FRACTION",
    ("validation", "seed"): "VALIDATION_SEED",
    ("schedule", "every"): "STEP_EVERY",
    ("schedule", "gamma"): "STEP_GAMMA",
    ("ema", "decay"): "EMA_DECAY",
    ("eval", "batch_size"): "EVAL_BATCH_SIZE",
}

# Source constants the script reads even when the spec leaves them unset (None).
_ALWAYS_DEFINED = frozenset({"DATA_ROOT", "MEMORY_BUDGET", "CACHE"})

# "Why" comments where the registry's "what" is not enough.
_WHY = {
    "VALIDATION_SEED": "independent of SEED: a new training seed never moves images between splits",
    "SUBSET": "a stratified sample of the training share; validation stays whole",
    "EVAL_BATCH_SIZE": "no gradients are kept at evaluation, so larger batches fit",
    "LABEL_SMOOTHING": "softened targets: less over-confidence, often better accuracy",
    "EMA_DECAY": "per step, warmed up so short runs are not dominated by the initial weights",
    "PRECISION": "auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also on CPUs with native bf16",
    "COMPILE": "torch.compile the model; auto: only on CUDA runs long enough to repay it",
    "MEMORY_BUDGET": "GiB of decoded images kept in memory, else streamed (None: half of free)",
    "CACHE": "folder of the decode cache (None: the user's, ~/.cache/improve/folders)",
}

# Helper fragments (templates/augment/_*.py.jinja) an op's fragment calls.
_HELPERS: dict[str, tuple[str, ...]] = {
    "augment/random_crop.py.jinja": ("shift",),
    "augment/translate.py.jinja": ("shift",),
    "augment/rotation.py.jinja": ("affine",),
    "augment/random_erasing.py.jinja": ("box",),
    "augment/cutout.py.jinja": ("box",),
    "augment/color_jitter.py.jinja": ("gray",),
    "augment/rand_augment.py.jinja": ("affine", "gray", "policy"),
    "augment/trivial_augment.py.jinja": ("affine", "gray", "policy"),
    "tta/translate.py.jinja": ("shift",),
}
_HELPER_ORDER = ("shift", "affine", "box", "gray", "policy")

# Imports the script may carry, in order; each is kept only when the code uses a name it binds
# (see render_script). torch itself is always imported.
_IMPORTS = (
    Import("argparse"),
    Import("contextlib"),
    Import("copy"),
    Import("ctypes"),
    Import("gzip"),
    Import("hashlib"),
    Import("json"),
    Import("logging"),
    Import("math"),
    Import("os"),
    Import("pickle"),
    Import("queue"),
    Import("shutil"),
    Import("sys"),
    Import("tempfile"),
    Import("threading"),
    Import("time"),
    Import("traceback"),
    Import("warnings"),
    Import("collections.abc", ("Callable", "Iterator")),
    Import("dataclasses", ("dataclass", "replace")),
    Import("pathlib", ("Path",)),
    Import("typing", ("Any", "cast")),
    Import("numpy", alias="np"),
    Import("torch.nn.functional", alias="F"),
)


def _imports(used: set[str] | None) -> tuple[Import, ...]:
    """The imports binding a name in ``used`` (all of them when ``used`` is None)."""
    out = []
    for line in _IMPORTS:
        if line.names:
            kept = tuple(n for n in line.names if used is None or n in used)
            if kept:
                out.append(dataclasses.replace(line, names=kept))
        elif used is None or (line.alias or line.module) in used:
            out.append(line)
    return tuple(out)


def _constant_name(category: str, param: str) -> str:
    return _CONSTANT_NAMES.get((category, param), param.upper())


def _docs(category: str, op: Op) -> dict[str, str]:
    comp = registry.component(category, op.name)
    assert comp is not None, f"{category} {op.name} is not in the registry"
    return {p.name: p.doc for p in comp.params}


def _op_constants(category: str, op: Op) -> list[Constant]:
    docs = _docs(category, op)
    out = []
    for name, value in op.params.items():
        constant = _constant_name(category, name)
        out.append(Constant(constant, value, _WHY.get(constant, docs[name])))
    return out


def _field_constant(block: str, field: str, value: ParamValue) -> Constant:
    spec = registry.block(block).field(field)
    assert spec is not None
    name = _constant_name(block, field)
    return Constant(name, value, _WHY.get(name, spec.doc))


def _compile_constant(value: str) -> Constant:
    """``COMPILE``: True or False as the spec says, or "auto" (the script decides)."""
    constant = _field_constant("train", "compile", value)
    flag = {"true": True, "false": False}.get(value)
    return constant if flag is None else dataclasses.replace(constant, value=flag)


def graph_blocker(spec: Spec) -> str | None:
    """Why one CUDA graph cannot replay the spec's training step, or None when it can."""
    if spec.train.precision == "fp16":
        return "fp16 loss scaling reads the gradients' overflow flag on the host"
    for op in spec.augment.ops:
        comp = registry.component("augment", op.name)
        if comp is not None and comp.graph_blocker is not None:
            return comp.graph_blocker
    return None


def _graph_constant(spec: Spec) -> Constant:
    blocker = graph_blocker(spec)
    why = blocker or "on CUDA the step runs as one captured graph (--cuda-graph off: eager)"
    return Constant("CUDA_GRAPH", blocker is None, why)


def _constants(spec: Spec) -> tuple[ConstantGroup, ...]:
    train = spec.train
    groups = [
        ConstantGroup(
            "pipeline",
            (
                Constant("PIPELINE", spec.pipeline.name, "the spec's pipeline name"),
                Constant("SPEC_SHA256", spec.sha256, "the spec this script was compiled from"),
                _field_constant("pipeline", "metric", spec.pipeline.metric),
                _field_constant("pipeline", "seed", spec.pipeline.seed),
            ),
        ),
        ConstantGroup(
            "data",
            (
                *(
                    c
                    for c in _op_constants("source", spec.data.source)
                    if c.value is not None or c.name in _ALWAYS_DEFINED
                ),
                *_op_constants("validation", spec.data.validation),
                _field_constant("data", "batch_size", spec.data.batch_size),
            ),
        ),
    ]
    optional: list[Constant] = []
    if train.ema is not None:
        optional += _op_constants("ema", train.ema)
    if train.clip_grad_norm is not None:
        optional.append(_field_constant("train", "clip_grad_norm", train.clip_grad_norm))
    if train.early_stopping is not None:
        optional.append(_field_constant("train", "early_stopping", train.early_stopping))
    groups.append(
        ConstantGroup(
            "train",
            (
                _field_constant("train", "epochs", train.epochs),
                *_op_constants("optimizer", train.optimizer),
                *_op_constants("schedule", train.schedule),
                *_op_constants("loss", train.loss),
                _field_constant("train", "precision", train.precision),
                _compile_constant(train.compile),
                _graph_constant(spec),
                *optional,
            ),
        )
    )
    groups.append(
        ConstantGroup("eval", (_field_constant("eval", "batch_size", spec.eval.batch_size),))
    )
    names = [c.name for g in groups for c in g.constants]
    assert len(names) == len(set(names)), f"constant names collide: {names}"
    return tuple(groups)


def _template(category: str, op: Op) -> str:
    comp = registry.component(category, op.name)
    assert comp is not None, f"{category} {op.name} is not in the registry"
    return comp.template


def _schedule_arguments(template: str) -> tuple[str, ...] | None:
    """What the schedule's ``lr_factor`` takes after ``step``, read from its own fragment (the
    one place that says), or None when the fragment defines no ``lr_factor`` (constant lr)."""
    env = environment()
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, template)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "lr_factor":
            return tuple(arg.arg for arg in node.args.args[1:])
    return None


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _mixes_labels(op: Op) -> bool:
    comp = registry.component("augment", op.name)
    return comp is not None and comp.mixes_labels


def _layer_shapes(layers: tuple[Op, ...]) -> tuple[tuple[bool, ...], bool]:
    """Whether each layer's input is flat (vectors), and whether the last output is."""
    flat = False
    inputs = []
    for op in layers:
        inputs.append(flat)
        comp = registry.component("layer", op.name)
        output = comp.output if comp is not None else "image"
        if output != "same":
            flat = output == "vector"
    return tuple(inputs), flat


def _context(spec: Spec, imports: tuple[Import, ...]) -> ScriptContext:
    augment_templates = _unique([_template("augment", op) for op in spec.augment.ops])
    tta_templates = _unique([_template("tta", op) for op in spec.eval.tta])
    wanted = {h for t in (*augment_templates, *tta_templates) for h in _HELPERS.get(t, ())}
    helpers = tuple(f"augment/_{h}.py.jinja" for h in _HELPER_ORDER if h in wanted)
    layer_input_flat, layers_output_flat = _layer_shapes(spec.model.layers)
    return ScriptContext(
        spec_path=spec.path,
        constants=_constants(spec),
        source_template=_template("source", spec.data.source),
        validation_template=_template("validation", spec.data.validation),
        in_memory=spec.data.source.name != "image_folder",
        takes_data_root="root" in spec.data.source.params,
        helper_templates=helpers,
        augment_templates=augment_templates,
        augment_calls=tuple(
            OpCall(op.name, tuple(op.params.items()), _mixes_labels(op)) for op in spec.augment.ops
        ),
        mixes_labels=any(_mixes_labels(op) for op in spec.augment.ops),
        augments_split=bool(spec.augment.ops)
        and not any(_mixes_labels(op) for op in spec.augment.ops),
        autocasts=spec.train.precision != "fp32",
        optimizer_template=_template("optimizer", spec.train.optimizer),
        schedule_template=_template("schedule", spec.train.schedule),
        schedule_arguments=_schedule_arguments(_template("schedule", spec.train.schedule)),
        loss_template=_template("loss", spec.train.loss),
        ema_template=_template("ema", spec.train.ema) if spec.train.ema is not None else None,
        graph_blocker=graph_blocker(spec),
        tta_templates=tta_templates,
        tta_calls=tuple(OpCall(f"tta_{op.name}", tuple(op.params.items())) for op in spec.eval.tta),
        imports=imports,
        dataset=registry.dataset_facts(spec.data.source.name),
        layer_input_flat=layer_input_flat,
        layers_output_flat=layers_output_flat,
    )


# ---------------------------------------------------------------- the boundary


def _template_location(exc: BaseException) -> str:
    """``templates/x.py.jinja:LINE`` of the innermost template frame, if any."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.name:
        return f"templates/{exc.name}:{exc.lineno}"
    root = str(templates_dir())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)]
    if not frames:
        return "templates"
    frame = frames[-1]
    return f"templates/{Path(frame.filename).relative_to(root)}:{frame.lineno}"


def _render(name: str, context: dict[str, Any]) -> str:
    """Render one template; every Jinja failure becomes a ``RenderError`` here."""
    try:
        return environment().get_template(name).render(context)
    except RenderError as exc:
        raise RenderError(f"{_template_location(exc)}: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"{_template_location(exc)}: {exc.message or exc}") from exc


def format_code(source: str) -> str:
    """black, with the project's fixed mode; unparsable output is a ``RenderError``."""
    try:
        return black.format_str(source, mode=BLACK_MODE)
    except InvalidInput as exc:
        raise RenderError(f"the rendered script is not valid Python: {exc}") from exc


def _names_used(source: str) -> set[str]:
    """Names the code loads, ignoring the import statements that bind them."""
    tree = ast.parse(source)
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def render_script(spec: Spec) -> str:
    """The spec as one standalone, black-formatted PyTorch training script."""
    # Two passes: render with every optional import, then again with only those the code uses,
    # so the script never carries an unused import whatever blocks the spec has.
    draft = _render(SKELETON, {"spec": spec, "script": _context(spec, _imports(None))})
    try:
        used = _names_used(draft)
    except SyntaxError as exc:
        raise RenderError(
            f"the rendered script is not valid Python: line {exc.lineno}: {exc.msg}"
        ) from exc
    text = _render(SKELETON, {"spec": spec, "script": _context(spec, _imports(used))})
    return format_code(text)
