"""Training recipes as data: one JSON file per recipe in `training/recipes/`.

    recipe = load_recipe("imagenet1k_mobilevitv2")
    recipe = apply_overrides(recipe, ["optimizer.weight_decay=0.01", "epochs=5", "data.seed=3"])

A recipe is a nested dict of JSON values. `apply_overrides` takes `dotted.path=value` strings (as
typed on a command line): the path must name an existing field, and the value must have that
field's type (an int field takes ints, a float field ints or floats, a list a JSON list of the
same length and element types, a string any text). A field whose value is null takes any JSON
value. Errors name the field and say what was expected.
"""

import copy
import json
import os

RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")

REQUIRED_FIELDS = ("name", "task", "model", "data", "optimizer", "schedule", "epochs")


def available_recipes():
    """Names of the recipes shipped in `training/recipes/`, sorted."""
    return sorted(f[: -len(".json")] for f in os.listdir(RECIPES_DIR) if f.endswith(".json"))


def load_recipe(name_or_path):
    """A recipe dict from a shipped recipe name or a path to a JSON file."""
    path = os.fspath(name_or_path)
    if not os.path.isfile(path):
        if os.sep in path or path.endswith(".json"):
            raise FileNotFoundError(f"no recipe file {path}")
        if path not in available_recipes():
            raise ValueError(f"unknown recipe {path!r}; available recipes: {', '.join(available_recipes())}")
        path = os.path.join(RECIPES_DIR, path + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(recipe).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in recipe]
    if missing:
        raise ValueError(f"{path} lacks the fields {', '.join(missing)}")
    return recipe


def _type_name(value):
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", list: "a list", dict: "a section"}.get(
        type(value), type(value).__name__
    )


def _parse(text):
    """Command-line text -> a JSON value; bare words are strings; True/False/None as in Python."""
    aliases = {"True": True, "False": False, "None": None}
    if text in aliases:
        return aliases[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(path, current, text, value):
    """`value` (parsed from `text`) checked and converted to the type of `current`."""

    def fail(expected):
        raise ValueError(f"override {path}={text}: {path} is {expected}, received {value!r}")

    if current is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            fail("a bool (true or false)")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            fail("an int")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a float")
        return float(value)
    if isinstance(current, str):
        return text  # a string field takes the text as typed ("name=123" is the string "123")
    if isinstance(current, list):
        if not isinstance(value, list):
            fail(f"a list of {len(current)} (JSON, e.g. [1, 2])")
        if len(value) != len(current):
            fail(f"a list of {len(current)}")
        return [
            _coerce(f"{path}[{i}]", c, json.dumps(v), v) if c is not None else v for i, (c, v) in enumerate(zip(current, value))
        ]
    if isinstance(current, dict):
        raise ValueError(
            f"override {path}={text}: {path} is a section; set one of its fields: {', '.join(sorted(current))}"
        )
    fail(_type_name(current))


def apply_overrides(recipe, overrides):
    """A copy of `recipe` with `dotted.path=value` overrides applied, type-checked."""
    recipe = copy.deepcopy(recipe)
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ValueError(f"an override must look like field.path=value, received {override!r}")
        path, _, text = override.partition("=")
        path, text = path.strip(), text.strip()
        keys = path.split(".")
        node = recipe
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth]) or "the recipe"
            if not isinstance(node, dict):
                raise ValueError(f"override {override}: {where} is {_type_name(node)}, it has no field {key!r}")
            if key not in node:
                raise ValueError(
                    f"override {override}: unknown field {'.'.join(keys[: depth + 1])!r}; "
                    f"{where} has {', '.join(sorted(node))}"
                )
            if depth < len(keys) - 1:
                node = node[key]
        node[keys[-1]] = _coerce(path, node[keys[-1]], text, _parse(text))
    return recipe
