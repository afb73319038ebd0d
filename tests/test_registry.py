"""The registry is the single source of facts: enumerate it and check everything derived.

Templates, the reference text (``improve docs``), the expert's prompt, the LLM grammar, the
command line, dataset profiles, ``improve init``, the rendered script and the journal's
statuses all read the registry; each test here walks the registry and checks one of them.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
from conftest import load_script
from hypothesis import given
from hypothesis import strategies as st

from improve_dsl import cli, docs, fmt, init, registry
from improve_dsl.dataset_profile import input_shape, profile_dataset
from improve_dsl.grammar_export import block_grammar
from improve_dsl.ir import Op
from improve_dsl.paths import templates_dir
from improve_dsl.refine.experts.llm import prompts
from improve_dsl.render import _layer_shapes, render_script
from improve_dsl.validate import load_text

ALL_COMPONENTS = [c for comps in registry.COMPONENTS.values() for c in comps]


def _spec(**blocks: str) -> str:
    """A small valid spec with some blocks' bodies replaced."""
    body = {
        "data": "source = digits()",
        "model": "arch = mlp()",
        "augment": "",
        "train": "epochs = 1",
        "eval": "",
    }
    body.update(blocks)
    text = "pipeline t {\n  metric = accuracy\n}\n"
    for name, inside in body.items():
        text += f"{name} {{\n  {inside}\n}}\n" if inside else f"{name} {{\n}}\n"
    return text


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize("comp", ALL_COMPONENTS, ids=lambda c: f"{c.category}.{c.name}")
def test_every_component_has_its_template(comp: registry.Component) -> None:
    assert (templates_dir() / comp.template).is_file()


def test_every_template_belongs_to_a_registry_entry() -> None:
    known = {c.template for c in ALL_COMPONENTS} | {b.template for b in registry.BLOCKS}
    for path in templates_dir().glob("*/*.py.jinja"):
        if path.name.startswith("_"):
            continue  # helper fragments, included by entries
        relative = path.relative_to(templates_dir()).as_posix()
        assert relative in known, f"{relative} renders nothing in the registry"


def test_templates_restate_no_dataset_fact() -> None:
    # The files' locations and class names come from the registry, through the context.
    for comp in registry.SOURCES:
        if comp.dataset is None:
            continue
        text = (templates_dir() / comp.template).read_text()
        for folder in comp.dataset.system_folders:
            assert folder not in text
        # CIFAR-100 has a class "train", and its files are called train and test.
        names = [n for n in comp.dataset.class_names if len(n) > 3 and n not in ("train", "test")]
        assert not any(f'"{name}"' in text for name in names)


@pytest.mark.parametrize(
    "source", [c.name for c in registry.SOURCES if c.dataset and c.dataset.system_folders]
)
def test_the_rendered_script_carries_the_registry_facts(source: str) -> None:
    script = render_script(load_text(_spec(data=f"source = {source}()"), "t.imp"))
    facts = registry.dataset_facts(source)
    assert facts is not None
    for folder in facts.system_folders:
        assert f'Path("{folder}")' in script


_ONE_HOT = "targets = F.one_hot(labels, num_classes)"  # soft targets: an op mixes labels


def test_label_mixing_follows_the_registry() -> None:
    plain = ", ".join(c.name + "()" for c in registry.AUGMENTS if not c.mixes_labels)
    assert _ONE_HOT not in render_script(load_text(_spec(augment=f"ops = [{plain}]"), "t.imp"))
    for comp in registry.AUGMENTS:
        if comp.mixes_labels:
            text = _spec(augment=f"ops = [{comp.name}()]")
            assert _ONE_HOT in render_script(load_text(text, "t.imp")), comp.name


@pytest.mark.parametrize("layer", registry.LAYERS, ids=lambda c: c.name)
def test_layer_outputs_decide_where_the_model_flattens(layer: registry.Component) -> None:
    """After an image layer the input is images; after a vector layer vectors; an
    activation keeps whatever came before (vectors after flatten, images after conv)."""
    conv, flatten, this = (Op.of(name, {}) for name in ("conv", "flatten", layer.name))
    inputs, output_flat = _layer_shapes((conv, flatten, this))
    assert inputs == (False, False, True)  # what conv, flatten and this layer are given
    assert output_flat is (layer.output != "image")
    inputs, output_flat = _layer_shapes((conv, this))
    assert inputs == (False, False)
    assert output_flat is (layer.output == "vector")


def test_the_classifier_flattens_only_images() -> None:
    layers = "layers = [conv(out = 4), relu(), flatten(), linear(out = 8), relu(), linear(out = 4)]"
    script = render_script(load_text(_spec(model=layers), "t.imp"))
    model = script[script.index("def build_model") :]
    model = model[: model.index("nn.LazyLinear(num_classes)")]
    assert model.count("nn.Flatten()") == 1, model  # the listed one only
    images = render_script(load_text(_spec(model="layers = [conv(out = 4), relu()]"), "t.imp"))
    model = images[images.index("def build_model") :]
    model = model[: model.index("nn.LazyLinear(num_classes)")]
    assert model.count("nn.Flatten()") == 1, model  # added before the classifier


# ---------------------------------------------------------------- reference text and prompts


def test_docs_cover_every_block_field_and_component() -> None:
    text = docs.overview()
    for spec in registry.BLOCKS:
        assert f"block {spec.name}" in text
        for fld in spec.fields:
            assert f"  {fld.name} (" in text
    for comp in ALL_COMPONENTS:
        assert docs.component_signature(comp) in text
        if comp.dataset is not None:
            assert docs.dataset_summary(comp.dataset) in text


def test_docs_print_defaults_with_the_one_printer() -> None:
    for comp in ALL_COMPONENTS:
        for p in comp.params:
            if not p.required:
                assert f"{p.name} = {fmt.literal(p.default, p.kind)}" in docs.component_signature(
                    comp
                )


def test_the_expert_prompt_names_every_block_and_every_locked_field() -> None:
    system = prompts.expert_system(["train"], "accuracy", constrained=False)
    for name in registry.BLOCK_NAMES:
        assert name in system
    for block, field in registry.locked_fields():
        assert f"{block}.{field}" in system


@pytest.mark.parametrize("block", registry.REFINABLE_BLOCKS)
def test_the_grammar_holds_every_editable_field_and_op_and_no_locked_one(block: str) -> None:
    grammar = block_grammar(block)
    spec = registry.block(block)
    for fld in spec.fields:
        assert (f'"{fld.name}' in grammar) is not fld.locked, fld.name
        if fld.category and not fld.locked:
            for comp in registry.components(fld.category):
                assert f'"{comp.name}' in grammar
                for p in comp.params:
                    for choice in p.choices:
                        assert f'"{choice}"' in grammar


# ---------------------------------------------------------------- typed choices


def _params_with_choices() -> list[tuple[registry.Component, registry.Param]]:
    return [(c, p) for c in ALL_COMPONENTS for p in c.params if p.choices]


@pytest.mark.parametrize(
    "comp,param", _params_with_choices(), ids=lambda x: getattr(x, "name", str(x))
)
def test_choices_are_typed_and_validated(comp: registry.Component, param: registry.Param) -> None:
    expected = int if param.kind == "int" else str
    assert all(type(c) is expected for c in param.choices)
    assert param.default in param.choices
    if comp.category != "arch":
        return
    for choice in param.choices:
        text = _spec(model=f"arch = {comp.name}({param.name} = {choice})")
        assert load_text(text, "t.imp").model.arch.params[param.name] == choice  # type: ignore[union-attr]
    if param.kind == "int":
        wrong = max(param.choices) + 1  # type: ignore[type-var,operator]
        with pytest.raises(Exception, match="is not a choice"):
            load_text(_spec(model=f"arch = {comp.name}({param.name} = {wrong})"), "t.imp")


# ---------------------------------------------------------------- datasets, CLI, statuses


@pytest.mark.parametrize("source", registry.BUILTIN_DATASETS)
def test_profiles_read_the_registry_facts(source: str) -> None:
    facts = registry.dataset_facts(source)
    assert facts is not None
    op = Op.of(source, {})
    assert input_shape(op) == (
        facts.channels,
        facts.image_size,
        facts.image_size,
        facts.num_classes,
    )
    profile = profile_dataset(op)
    assert (profile.train_count, profile.test_count) == (facts.train_count, facts.test_count)
    assert profile.class_names == facts.class_names
    assert len(facts.train_class_counts) == facts.num_classes


def test_digits_counts_are_the_split_the_script_makes() -> None:
    """1,797 images, the script's stratified 20% test share: the counts the registry states."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    facts = registry.dataset_facts("digits")
    assert facts is not None
    target = load_digits().target
    assert sum(facts.train_class_counts) == len(target)
    per_class = [int((target == c).sum()) for c in range(10)]
    assert tuple(per_class) == facts.train_class_counts
    module = load_script(render_script(load_text(_spec(), "t.imp")))
    train, test, _ = module.load_source()  # digits reads no folder: no root argument
    assert (len(train.labels), len(test.labels)) == (facts.train_count, facts.test_count)


def test_init_flips_only_where_the_registry_says_they_are_safe() -> None:
    for source in registry.BUILTIN_DATASETS:
        text = init.spec_text(source)
        assert ("horizontal_flip" in text) is registry.flips_safe(source), source


def test_the_command_line_offers_the_registry_choices() -> None:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    grammar = subparsers.choices["grammar"]
    block = next(a for a in grammar._actions if a.dest == "block")
    assert tuple(block.choices or ()) == registry.REFINABLE_BLOCKS
    data = next(a for a in subparsers.choices["init"]._actions if a.dest == "data")
    assert all(name in (data.help or "") for name in registry.BUILTIN_DATASETS)
    assert init.BUILTINS == registry.BUILTIN_DATASETS


# ---------------------------------------------------------------- the one printer


_PLAIN = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=0, max_value=10**9),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.lists(st.integers(min_value=0, max_value=4096), max_size=4).map(tuple),
)


@given(_PLAIN)
def test_literal_reads_back_as_the_same_value(value: registry.ParamValue) -> None:
    """What the printer writes, the language reads back as the value it was given."""
    text = fmt.literal(value)
    assert fmt.format_text(f"x {{\n  v = {text}\n}}\n") == f"x {{\n  v = {text}\n}}\n"
    if isinstance(value, float):
        assert isinstance(eval(text), float) and math.isclose(eval(text), value)  # a number
        assert re.fullmatch(r"[\d.e+-]+", text)


def test_strings_are_quoted_only_where_the_registry_says_text() -> None:
    text = fmt.call("image_folder", {"root": 'my "data"', "channels": 1}, "source")
    assert text == 'image_folder(root = "my \\"data\\"", channels = 1)'
    assert fmt.call("torchvision", {"name": "resnet18"}, "arch") == "torchvision(name = resnet18)"
    assert fmt.literal(0.00050000001, significant=4) == "0.0005"
    assert fmt.literal(3.0) == "3.0"


def test_no_second_printer_of_imp_values() -> None:
    """Writers of spec text print strings through fmt: no copy of its escape table."""
    package = Path(__file__).resolve().parent.parent / "improve_dsl"
    for path in package.rglob("*.py"):
        if path.name != "fmt.py":
            # syntax.py reads escapes back; nothing else may write them
            assert path.name == "syntax.py" or "_ESCAPES = {" not in path.read_text(), path
