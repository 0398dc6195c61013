"""The reranking spec: which layers run, where the query meets the document, how much is pruned.

A checkpoint may carry it as ``minireranker.json``; ``bundle.json`` records the one actually used. The
spec refers to the decoder's layers by index, ``0 .. L-1``.

Schema of ``minireranker.json`` (version 1; every key optional, defaults in :class:`RerankSpec`)::

    {
      "schema_version": 1,
      "exit_layer": 27,            # E: score at the output of this layer (final norm + yes/no rows)
      "band": [0, 27],             # [A, B]: query tokens see document tokens only in layers A..B
      "keep_ratio": 1.0,           # fraction of each image's visual tokens kept (0 < r <= 1)
      "guide": "self",             # pruning guide: "self" or "embedder:<checkpoint dir>"
      "guide_layer": null,         # layer whose attention ranks visual tokens (default: see below)
      "query_position": null,      # null: the query continues after the document (Qwen3-VL rope index);
                                   # an integer P: query token i sits at position P + i whatever the document
      "template": "vision-first",  # the token-level format (runtime/template.py FORMATS); null: the
                                   # checkpoint's own (jina-reranker-m0's for its ranking class, else vision-first)
      "system": "...", "instruction": "...",   # the format's strings (null: the format's defaults)
      "yes_token": "yes", "no_token": "no",    # score = logit(yes) - logit(no); each must be one token
      "head": {"kind": "yes_no"},  # or {"kind": "classifier", "linear1": "score.0", "linear2": "score.2",
                                   #      "activation": "relu", "offset": -2.65} (see HeadSpec)
      "trained": "query-first"     # the order the checkpoint was trained in: "query-first" (Qwen3-VL-Reranker's
                                   # own: system, instruction, query, then the document) or the spec's template
                                   # (document first as it runs); null: query-first for vision-first, else the
                                   # template. Fidelity is measured against dense scoring in this format.
    }

The template strings and the head left null take the format's defaults (:meth:`RerankSpec.filled`):
Qwen3-VL-Reranker's system prompt and instruction and yes/no for ``vision-first``, True/False for
``monoqwen2-vl``, the score MLP for ``jina-reranker-m0``. A format without a system segment or an
instruction field refuses a string for it, rather than ignoring it.

A relative ``embedder:<dir>`` in a spec *file* is relative to that file's directory, so a checkpoint can
ship its embedder beside it (``"guide": "embedder:../embedder"``).

``exit_layer`` and ``band`` may be null: they then resolve against the model (E = L-1, band = [0, E]).

Why ``query_position`` exists: with ``A > 0`` the query's first ``A`` layers must not depend on the
document, so that they run once per query. Rotary positions make them depend on where the query starts,
so an approximate spec with ``A > 0`` fixes the query's start position. With ``A = 0`` there is no query
head and the query may keep Qwen3-VL's own positions (the exact spec does).

Guide layer default: for ``self`` it is ``A`` clamped to at most ``B`` (the first layer whose document K/V
the query reads); for an embedder it is the embedder's last layer. Heads are averaged after the softmax.

A spec given by a user (every command's ``--spec``, ``--exact`` and the individual flags) is read by
:func:`read_spec` only, so that each form works, and fails with the same message, everywhere.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import SpecError

SCHEMA_VERSION = 1
HEAD_KINDS = ("yes_no", "classifier", "linear")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "identity")

DEFAULT_SYSTEM = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


@dataclass(frozen=True)
class HeadSpec:
    """How the score is read from the exit layer's hidden state (after the final norm).

    ``yes_no``: logit(yes) - logit(no) from the LM head's two rows (the spec's ``yes_token``/``no_token``).
    ``classifier``: ``linear2(act(linear1(h)))[0]``, a Linear -> activation -> Linear on the hidden state
    whose weights are the checkpoint tensors ``{linear1}.weight``/``.bias`` and ``{linear2}.weight``/``.bias``
    (jina-reranker-m0: ``score.0`` and ``score.2``, ReLU). ``offset`` is added before the sigmoid that
    turns a score into a probability (jina-reranker-m0: -2.65); the ranking never depends on it.
    ``linear``: ``linear1(h)[0]``, one Linear on the normed hidden state: the calibrated exit head that
    ``minireranker adapt --exit-head`` fits to the teacher's scores (tensors ``minireranker.exit_head.*``).
    ``layer``: the exit layer such a head was fitted at. A spec exiting elsewhere is refused with it
    (:meth:`RerankSpec.resolve`), and a spec that inherits the checkpoint's format takes it only when it exits
    there (:meth:`fits`); otherwise the format's own head (the yes/no rows) is read.
    """

    kind: str = "yes_no"
    linear1: str | None = None
    linear2: str | None = None
    activation: str = "relu"
    offset: float = 0.0
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise SpecError(f"head kind must be one of {list(HEAD_KINDS)}, got {self.kind!r}")
        if self.kind in ("classifier", "linear"):
            for name in ("linear1", "linear2") if self.kind == "classifier" else ("linear1",):
                if not isinstance(getattr(self, name), str) or not getattr(self, name):
                    raise SpecError(f"a {self.kind} head needs '{name}': the checkpoint tensor prefix of its Linear "
                                    "(for example \"score.0\" for score.0.weight and score.0.bias)")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"head activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.offset, (int, float)) or isinstance(self.offset, bool):
            raise SpecError(f"head offset must be a number, got {self.offset!r}")
        object.__setattr__(self, "offset", float(self.offset))
        if self.layer is not None and (not isinstance(self.layer, int) or isinstance(self.layer, bool)
                                       or self.layer < 0):
            raise SpecError(f"head layer must be a non-negative layer index (the exit layer the head was fitted "
                            f"at), got {self.layer!r}")

    def fits(self, exit_layer: int | None) -> bool:
        """Whether a spec exiting at ``exit_layer`` (None: the last layer) may read this head."""
        return self.layer is None or exit_layer == self.layer

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["layer"] is None:  # heads without one keep the dict (and the bundle fingerprints) they had
            del d["layer"]
        return d

    @classmethod
    def from_value(cls, value: Any) -> "HeadSpec":
        """A head as written in JSON: ``"yes_no"``, ``{"kind": ...}``, or a HeadSpec."""
        if isinstance(value, HeadSpec):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if not isinstance(value, dict):
            raise SpecError(f"head must be \"yes_no\" or an object with a 'kind', got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise SpecError(f"head: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**value)


@dataclass(frozen=True)
class RerankSpec:
    """A validated reranking spec. ``resolve(num_layers)`` fills the model-dependent defaults."""

    exit_layer: int | None = None
    band: tuple[int, int] | None = None
    keep_ratio: float = 1.0
    guide: str = "self"
    guide_layer: int | None = None
    query_position: int | None = None
    template: str | None = None
    system: str | None = None
    instruction: str | None = None
    yes_token: str | None = None
    no_token: str | None = None
    head: HeadSpec | None = None
    trained: str | None = None

    def __post_init__(self) -> None:
        if self.trained is not None and not isinstance(self.trained, str):
            raise SpecError(f"trained must be \"query-first\" or a template name, got {self.trained!r}")
        if self.head is not None:
            object.__setattr__(self, "head", HeadSpec.from_value(self.head))
        if self.template is not None:
            from .template import FORMATS  # the formats live with the template code

            if self.template not in FORMATS:
                raise SpecError(f"template {self.template!r} is not a known format; choose one of {sorted(FORMATS)}")
        if self.band is not None:
            band = tuple(self.band) if isinstance(self.band, (list, tuple)) else ()
            if len(band) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in band):
                raise SpecError(f"band must be two layer indices [A, B], got {self.band!r}")
            if min(band) < 0:
                raise SpecError(f"band must hold non-negative layer indices [A, B], got {list(band)}")
            object.__setattr__(self, "band", band)
        for name in ("exit_layer", "guide_layer", "query_position"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise SpecError(f"{name} must be a non-negative integer or null, got {value!r}")
        if (not isinstance(self.keep_ratio, (int, float)) or isinstance(self.keep_ratio, bool)
                or not 0.0 < float(self.keep_ratio) <= 1.0):
            raise SpecError(
                f"keep_ratio must satisfy 0 < keep_ratio <= 1, got {self.keep_ratio!r}; "
                "use 1.0 to keep every visual token"
            )
        object.__setattr__(self, "keep_ratio", float(self.keep_ratio))
        if not isinstance(self.guide, str) or (
                self.guide != "self" and not (self.guide.startswith("embedder:") and len(self.guide) > 9)):
            raise SpecError(f"guide must be 'self' or 'embedder:<checkpoint dir>', got {self.guide!r}")
        for name in ("system", "instruction", "yes_token", "no_token"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SpecError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.yes_token == "" or self.no_token == "" or (self.yes_token is not None and self.yes_token == self.no_token):
            raise SpecError("yes_token and no_token must be two different non-empty strings")
        if self.band is not None:
            a, b = self.band
            if a > b:
                raise SpecError(f"band [A, B] needs A <= B, got [{a}, {b}]; swap them")
            if a > 0 and self.query_position is None:
                raise SpecError(
                    f"band starts at A={a} > 0, so the query's first layers run once per query and cannot "
                    "depend on where the document ends: set query_position to a fixed integer "
                    "(for example 256, past the longest document's positions)"
                )
        if self.exit_layer is not None and self.band is not None and self.band[1] > self.exit_layer:
            raise SpecError(
                f"band end B={self.band[1]} is past exit_layer E={self.exit_layer}; need B <= E "
                "(layers after the exit layer never run)"
            )

    # -- the format's defaults --------------------------------------------------------------------
    def filled(self, default_template: str = "vision-first") -> "RerankSpec":
        """This spec with the template (``default_template`` when unset), its strings and its head filled
        from the format's defaults (module docstring); a string the format has no field for is refused."""
        from .template import FORMATS

        name = self.template or default_template
        fmt = FORMATS[name]
        values: dict[str, Any] = {"template": name}
        for field_name, default, where in (("system", fmt.default_system, fmt.system),
                                           ("instruction", fmt.default_instruction, fmt.instruction)):
            value = getattr(self, field_name)
            if value is not None and "{" + field_name + "}" not in where:
                if value == default:
                    continue
                raise SpecError(f"template {name!r} has no {field_name} string (its format fixes it); "
                                f"remove '{field_name}' from the spec or choose another template")
            values[field_name] = default if value is None else value
        head = self.head or fmt.default_head
        values["head"] = head
        trained = self.trained or ("query-first" if name == "vision-first" else name)
        if trained not in ("query-first", name):
            raise SpecError(f"trained={trained!r}: a checkpoint is trained query-first or in the format it runs "
                            f"in ({name!r}); set \"trained\" to one of those")
        if trained == "query-first" and name != "vision-first":
            raise SpecError(f"trained=\"query-first\" is Qwen3-VL-Reranker's order, read with the vision-first "
                            f"template's strings; template {name!r} has its own order: remove \"trained\"")
        values["trained"] = trained
        if head.kind == "yes_no":
            values["yes_token"] = self.yes_token if self.yes_token is not None else fmt.answer[0]
            values["no_token"] = self.no_token if self.no_token is not None else fmt.answer[1]
            if values["yes_token"] == values["no_token"]:
                raise SpecError("yes_token and no_token must be two different non-empty strings")
        else:
            values["yes_token"], values["no_token"] = self.yes_token, self.no_token
        return dataclasses.replace(self, **values)

    # -- model-dependent resolution ---------------------------------------------------------------
    def resolve(self, num_layers: int, default_template: str = "vision-first") -> "RerankSpec":
        """Fill defaults for a model of ``num_layers`` decoder layers and check ``0<=A<=B<=E<L``; the
        format's strings and head are filled too (:meth:`filled`, ``default_template`` when unset)."""
        self = self.filled(default_template)
        exit_layer = num_layers - 1 if self.exit_layer is None else self.exit_layer
        band = (0, exit_layer) if self.band is None else self.band
        if not 0 <= exit_layer < num_layers:
            raise SpecError(
                f"exit_layer={exit_layer} is outside the model's layers 0..{num_layers - 1}; "
                f"pick an exit layer below {num_layers}"
            )
        if band[1] > exit_layer:
            raise SpecError(f"band end B={band[1]} is past exit_layer E={exit_layer}; need B <= E")
        if not self.head.fits(exit_layer):
            raise SpecError(f"the head {self.head.linear1 or self.head.kind!r} is an exit head fitted at layer "
                            f"{self.head.layer}, and this spec exits at layer {exit_layer}: set exit_layer "
                            f"{self.head.layer}, or head \"yes_no\" to read the LM head's rows")
        guide_layer = self.guide_layer
        if guide_layer is not None and self.guide == "self" and guide_layer > band[1]:
            raise SpecError(
                f"guide_layer={guide_layer} is past the band end B={band[1]}: the document prefix only runs "
                f"layers 0..{band[1]}; pick guide_layer <= {band[1]}"
            )
        return dataclasses.replace(self, exit_layer=exit_layer, band=band)

    def is_exact(self, num_layers: int) -> bool:
        """True when this spec reproduces the plain ``num_layers``-layer model on the vision-first sequence."""
        r = self.resolve(num_layers)
        return (r.exit_layer == num_layers - 1 and r.band == (0, r.exit_layer) and r.keep_ratio == 1.0
                and r.query_position is None)

    def guide_layer_for(self, guide_num_layers: int) -> int:
        """The layer whose attention ranks visual tokens (see the module docstring)."""
        if self.guide_layer is not None:
            return self.guide_layer
        if self.guide == "self":
            assert self.band is not None, "resolve() the spec first"
            return min(self.band[0], self.band[1])
        return guide_num_layers - 1

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["band"] = list(self.band) if self.band is not None else None
        d["head"] = self.head.to_dict() if self.head is not None else None
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "RerankSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"{source}: schema_version {version} is not supported (this build reads {SCHEMA_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**data)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "RerankSpec":
        """The spec in a ``minireranker.json`` file (a relative ``embedder:<dir>`` is read from its folder)."""
        path = Path(path)
        return cls.from_dict(_read_json_file(path), source=str(path)).relative_to(path.parent)

    def relative_to(self, directory: str | Path) -> "RerankSpec":
        """This spec with a relative ``embedder:<dir>`` read from ``directory`` (the spec file's folder), so a
        checkpoint that ships its embedder beside it (``embedder:../embedder``) works from any directory."""
        guide_dir = self.guide[len("embedder:"):] if self.guide.startswith("embedder:") else None
        if guide_dir is None or Path(guide_dir).is_absolute():
            return self
        return dataclasses.replace(self, guide="embedder:" + str((Path(directory) / guide_dir).resolve()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    # -- presets ----------------------------------------------------------------------------------
    @classmethod
    def exact(cls) -> "RerankSpec":
        """A=0, B=E=L-1, keep everything: the plain model on the vision-first sequence."""
        return cls()

    @classmethod
    def tiny(cls) -> "RerankSpec":
        """An approximate spec for 4-layer test models: exit at 2, band [1, 1], keep half."""
        return cls(exit_layer=2, band=(1, 1), keep_ratio=0.5, query_position=64)


def probability(score: float, head: HeadSpec | None = None) -> float:
    """A score as a probability: ``sigmoid(score + offset)`` (the head's offset; 0 for yes/no, where it is
    p(yes) over the two answers). Overflow-safe for any float."""
    import math

    z = float(score) + (head.offset if head is not None else 0.0)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"spec file {path} is not valid JSON: {exc}") from None


# -- a spec as the user gives it ------------------------------------------------------------------
# The fields the command line sets one by one (--exit-layer, --band, --keep-ratio, --guide, --query-position).
SPEC_FLAGS = ("exit_layer", "band", "keep_ratio", "guide", "query_position")


@dataclass(frozen=True)
class SpecArg:
    """A spec as a user gave it (the result of :func:`read_spec`).

    ``given``: the fields the user set (those left out may come from the checkpoint, e.g. its template
    strings); ``source``: ``exact``, ``inline spec``, the file's path, or ``flags``; ``data``: the JSON
    object as written (a file's or an inline one), None for ``exact`` and the flags.
    """

    spec: RerankSpec
    given: frozenset[str] = frozenset()
    source: str = "exact"
    data: dict[str, Any] | None = field(default=None, compare=False)


def parse_band(value: str | tuple[int, int] | list[int], option: str = "--band") -> tuple[int, int]:
    """``"A:B"`` (as on the command line) -> ``(A, B)``; a pair passes through. Range checks are RerankSpec's."""
    if isinstance(value, (tuple, list)):
        return tuple(value)  # type: ignore[return-value]
    try:
        a, b = (int(x) for x in str(value).split(":"))
    except ValueError:
        raise SpecError(f"{option} must be A:B (two layer indices), got {value!r}") from None
    return a, b


def read_spec(value: str | None = None, *, exact: bool = False,
              flags: Mapping[str, Any] | None = None, option: str = "--spec") -> SpecArg | None:
    """The one reader of a user's spec: ``value`` is a minireranker.json file, an inline JSON object
    (``'{"exit_layer": 2, "band": [1, 2], "query_position": 64}'``) or ``exact``; ``exact`` is ``--exact``;
    ``flags`` maps :data:`SPEC_FLAGS` names to values (None: not given; ``band`` may be ``"A:B"``).

    At most one of the three may be given (a :class:`SpecError` names them); None when none is: the
    caller then uses the checkpoint's own spec. ``option`` names the value's flag in messages.
    """
    chosen = {name: v for name, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(chosen) - set(SPEC_FLAGS))
    if unknown:
        raise SpecError(f"unknown spec flag(s) {unknown}; the flags are {list(SPEC_FLAGS)}")
    if sum([value is not None, bool(exact), bool(chosen)]) > 1:
        raise SpecError(f"choose one of {option} FILE, --exact, or the --exit-layer/--band/--keep-ratio flags")
    if exact:
        return SpecArg(RerankSpec.exact())
    if chosen:
        if "band" in chosen:
            chosen["band"] = parse_band(chosen["band"])
        return SpecArg(RerankSpec(**chosen), frozenset(chosen), "flags")
    if value is None:
        return None
    return _read_spec_value(value, option)


def _read_spec_value(value: str, option: str) -> SpecArg:
    if value.strip() == "exact":
        return SpecArg(RerankSpec.exact())
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise SpecError(f"{option} {value!r} is not valid JSON ({exc}); give a JSON object or a file") from None
        spec, source = RerankSpec.from_dict(data, source="inline spec"), "inline spec"
    else:
        path = Path(value)
        if not path.is_file():
            raise SpecError(f"{option} {value!r}: no such file; give a minireranker.json path, an inline JSON "
                            "object or 'exact'")
        data, source = _read_json_file(path), str(path)
        # a relative embedder:<dir> is relative to the file, as everywhere a spec file is read
        spec = RerankSpec.from_dict(data, source=source).relative_to(path.parent)
    return SpecArg(spec, frozenset(data) - {"schema_version"}, source, data)
