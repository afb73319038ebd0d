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
    LINE_LENGTH,
    RenderError,
    comment_text,
    docstring_text,
    identifier,
    literal,
    module_name,
)
from .ir import Op, Spec
from .paths import templates_dir, user_cache_dir
from .script_constants import (
    ConstantGroup,
    OpCall,
    arch_constant_names,
    constants,
    graph_blocker,
    layer_constant_names,
    op_calls,
)

SKELETON = "train.py.jinja"
BLACK_MODE = Mode(target_versions={TargetVersion.PY310}, line_length=LINE_LENGTH)


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
    arch_constants: dict[str, str]  # each arch parameter -> the constant holding its value
    layer_constants: tuple[dict[str, str], ...]  # the same for each layer of a layers list
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
    augment_calls = op_calls("augment", spec.augment.ops)
    mixes_labels = any(call.mixes_labels for call in augment_calls)
    return ScriptContext(
        spec_path=spec.path,
        constants=constants(spec),
        source_template=_template("source", spec.data.source),
        validation_template=_template("validation", spec.data.validation),
        in_memory=spec.data.source.name != "image_folder",
        takes_data_root="root" in spec.data.source.params,
        helper_templates=helpers,
        augment_templates=augment_templates,
        augment_calls=augment_calls,
        arch_constants=arch_constant_names(spec.model.arch) if spec.model.arch is not None else {},
        layer_constants=layer_constant_names(spec.model.layers),
        mixes_labels=mixes_labels,
        augments_split=bool(augment_calls) and not mixes_labels,
        autocasts=spec.train.precision != "fp32",
        optimizer_template=_template("optimizer", spec.train.optimizer),
        schedule_template=_template("schedule", spec.train.schedule),
        schedule_arguments=_schedule_arguments(_template("schedule", spec.train.schedule)),
        loss_template=_template("loss", spec.train.loss),
        ema_template=_template("ema", spec.train.ema) if spec.train.ema is not None else None,
        graph_blocker=graph_blocker(spec),
        tta_templates=tta_templates,
        tta_calls=op_calls("tta", spec.eval.tta, prefix="tta_"),
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


@functools.lru_cache(maxsize=32)
def format_code(source: str) -> str:
    """black, with the project's fixed mode; unparsable output is a ``RenderError``. Kept
    for the last few sources: black takes 0.2-0.4 s for a script, and a refine or an
    ablation renders the same spec again."""
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
    return format_code(render_unformatted(spec))


def render_unformatted(spec: Spec) -> str:
    """The script before black. The templates are written as black writes, so for the
    example specs this is the script already (a test holds them to it) and black, which
    still runs, takes half the time it would on a rougher draft."""
    # Two passes: render with every optional import, then again with only those the code uses,
    # so the script never carries an unused import whatever blocks the spec has.
    draft = _render(SKELETON, {"spec": spec, "script": _context(spec, _imports(None))})
    try:
        used = _names_used(draft)
    except SyntaxError as exc:
        raise RenderError(
            f"the rendered script is not valid Python: line {exc.lineno}: {exc.msg}"
        ) from exc
    return _render(SKELETON, {"spec": spec, "script": _context(spec, _imports(used))})
