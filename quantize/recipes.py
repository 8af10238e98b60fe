"""Quantization recipes: parsing `--recipe` text into one recipe per graph, and what each backend can do."""

from __future__ import annotations

from edge.bundle import NPU_RECIPES
from edge.errors import EdgeError

# npu-int8 and npu-a16w8 are static QDQ ONNX for NPU execution providers (8- or 16-bit activations, 8-bit weights),
# their int64 tensors retyped int32 (`edge.quantize.npu`); the qnn backend runs nothing else.
RECIPES = ("fp32", "fp16", "int8", "int4", *NPU_RECIPES)
# Which recipes each backend implements.
BACKEND_RECIPES: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8", "int4", *NPU_RECIPES),
    "executorch": ("fp32", "fp16", "int8", "int4"),
}
# Recipe keys that name several graphs at once.
GROUPS: dict[str, tuple[str, ...]] = {
    "lm": ("lm_prefill", "lm_step"),
    "depth": ("depth_step",),
    "codec": ("codec_decoder", "codec_encoder"),
}
GRAPHS: tuple[str, ...] = tuple(g for names in GROUPS.values() for g in names)
DEFAULT_GROUP_SIZE = 32


def _check_recipe(name: str, where: str) -> str:
    if name not in RECIPES:
        raise EdgeError(f"unknown recipe '{name}'{where}; choose one of: {', '.join(RECIPES)}")
    return name


def parse_recipe(text: str) -> dict[str, str]:
    """`int8` or `lm=int4,depth=int8,codec=int8` (keys: lm, depth, codec or a graph name) -> graph -> recipe.

    A bare recipe applies to every graph; with keys, graphs not named keep fp32. A later key
    overrides an earlier one for the graphs both name (`int8,lm=int4` is not allowed: use keys throughout).
    """
    if not isinstance(text, str) or not text.strip():
        raise EdgeError("the recipe is empty; give e.g. int8 or lm=int4,depth=int8,codec=int8")
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise EdgeError(f"recipe '{text}' has an empty item; separate items with single commas")
    if len(parts) == 1 and "=" not in parts[0]:
        recipe = _check_recipe(parts[0].lower(), "")
        return dict.fromkeys(GRAPHS, recipe)
    out: dict[str, str] = {}
    seen: set[str] = set()
    for part in parts:
        if "=" not in part:
            raise EdgeError(f"recipe item '{part}' in '{text}' has no key; write KEY=RECIPE with KEY one of "
                            f"{', '.join(GROUPS)} or a graph name ({', '.join(GRAPHS)})")
        key, _, value = (s.strip() for s in part.partition("="))
        key = key.lower()
        if key in seen:
            raise EdgeError(f"recipe key '{key}' is given twice in '{text}'")
        seen.add(key)
        names = GROUPS.get(key) or ((key,) if key in GRAPHS else None)
        if names is None:
            raise EdgeError(f"unknown recipe key '{key}'; use {', '.join(GROUPS)} or a graph name "
                            f"({', '.join(GRAPHS)})")
        recipe = _check_recipe(value.lower(), f" for '{key}'")
        for name in names:
            out[name] = recipe
    return {name: out.get(name, "fp32") for name in GRAPHS}


def check_backend(backend: str, recipe: str) -> None:
    """Raise a one-line EdgeError if `backend` cannot apply `recipe`."""
    can = BACKEND_RECIPES.get(backend)
    if can is None:
        raise EdgeError(f"backend '{backend}' cannot be quantized; quantize onnx or executorch graphs")
    if recipe not in can:
        hint = f" ({recipe} is static QDQ for NPU execution providers: quantize the onnx graphs)" \
            if recipe in NPU_RECIPES else ""
        raise EdgeError(f"the {backend} backend cannot do recipe '{recipe}'{hint}; it can do: {', '.join(can)}")


def recipe_label(recipe: str, group_size: int) -> str:
    """What the manifest records for a graph: e.g. "int4-g32", "int8", "npu-int8"."""
    return f"int4-g{group_size}" if recipe == "int4" else recipe


def check_group_size(group_size: int) -> int:
    if not isinstance(group_size, int) or group_size < 16 or group_size & (group_size - 1):
        raise EdgeError(f"--group-size must be a power of two of at least 16 (e.g. 32, 64, 128), got {group_size}")
    return group_size


def recipe_targets(text: str) -> dict[str, tuple[str, ...]]:
    """The keys a keyed recipe names, each with the graphs it stands for (empty for a bare recipe)."""
    parse_recipe(text)
    keys = [p.partition("=")[0].strip().lower() for p in text.split(",") if "=" in p]
    return {k: GROUPS.get(k, (k,)) for k in keys}
