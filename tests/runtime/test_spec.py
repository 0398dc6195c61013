"""RerankSpec: every rule raises a SpecError naming the field; files round-trip; defaults resolve."""

from __future__ import annotations

import json

import pytest

from minireranker.runtime.errors import SpecError, TokenizerError
from minireranker.runtime.spec import SCHEMA_VERSION, RerankSpec, parse_band, read_spec

NUM_LAYERS = 4


# -- field rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": -0.5}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ratio": float("nan")}, "keep_ratio"),
        ({"keep_ratio": "0.5"}, "keep_ratio"),
        ({"keep_ratio": True}, "keep_ratio"),
        ({"guide": "embedder"}, "guide"),
        ({"guide": "embedder:"}, "guide"),
        ({"guide": "other"}, "guide"),
        ({"guide": 5}, "guide"),
        ({"band": (1, 2)}, "query_position"),
        ({"band": [1]}, "band"),
        ({"band": [0, 1, 2]}, "band"),
        ({"band": ["0", 1]}, "band"),
        ({"band": [0.0, 1]}, "band"),
        ({"band": [True, 1]}, "band"),
        ({"band": 5}, "band"),
        ({"band": "01"}, "band"),
        ({"band": (2, 1), "query_position": 64}, "band"),
        ({"band": (-1, 2)}, "band"),
        ({"band": (-2, -1)}, "band"),
        ({"exit_layer": -1}, "exit_layer"),
        ({"exit_layer": 1.0}, "exit_layer"),
        ({"exit_layer": True}, "exit_layer"),
        ({"guide_layer": -3}, "guide_layer"),
        ({"query_position": -1}, "query_position"),
        ({"exit_layer": 1, "band": (0, 2)}, "exit_layer"),
        ({"yes_token": "yes", "no_token": "yes"}, "no_token"),
        ({"yes_token": ""}, "yes_token"),
        ({"no_token": ""}, "no_token"),
        ({"yes_token": 1}, "yes_token"),
        ({"system": ["a list"]}, "system"),  # null is valid: the format's default
        ({"instruction": 3}, "instruction"),
    ],
)
def test_invalid_field_raises_spec_error_naming_it(kwargs, field):
    with pytest.raises(SpecError, match=field):
        RerankSpec(**kwargs)


def test_band_start_after_zero_needs_query_position_and_says_how():
    with pytest.raises(SpecError, match="query_position") as info:
        RerankSpec(band=(1, 2))
    assert "A=1" in str(info.value)
    RerankSpec(band=(1, 2), query_position=64)  # the fix the message suggests is accepted


def test_yes_and_no_must_differ_names_both():
    with pytest.raises(SpecError) as info:
        RerankSpec(yes_token="oui", no_token="oui")
    assert "yes_token" in str(info.value) and "no_token" in str(info.value)


@pytest.mark.parametrize("keep_ratio", [1e-6, 0.25, 1, 1.0])
def test_keep_ratio_in_range_is_accepted_and_stored_as_float(keep_ratio):
    spec = RerankSpec(keep_ratio=keep_ratio)
    assert isinstance(spec.keep_ratio, float) and spec.keep_ratio == float(keep_ratio)


def test_band_list_is_stored_as_tuple():
    assert RerankSpec(band=[0, 2]).band == (0, 2)


# -- resolve(num_layers): 0 <= A <= B <= E < L ----------------------------------------------------
def test_resolve_defaults_exit_to_last_layer_and_band_to_zero_exit():
    spec = RerankSpec().resolve(NUM_LAYERS)
    assert spec.exit_layer == NUM_LAYERS - 1
    assert spec.band == (0, NUM_LAYERS - 1)


def test_resolve_default_band_follows_given_exit_layer():
    spec = RerankSpec(exit_layer=2).resolve(NUM_LAYERS)
    assert (spec.exit_layer, spec.band) == (2, (0, 2))


def test_resolve_keeps_given_values():
    spec = RerankSpec.tiny().resolve(NUM_LAYERS)
    assert (spec.exit_layer, spec.band, spec.keep_ratio, spec.query_position) == (2, (1, 1), 0.5, 64)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"exit_layer": NUM_LAYERS}, "exit_layer"),
        ({"exit_layer": 100}, "exit_layer"),
        ({"band": (0, NUM_LAYERS)}, "band"),  # E defaults to L-1, so B = L is past it
        ({"guide_layer": 3, "exit_layer": 3, "band": (0, 2)}, "guide_layer"),
    ],
)
def test_resolve_rejects_layers_outside_the_model(kwargs, field):
    spec = RerankSpec(**kwargs)
    with pytest.raises(SpecError, match=field):
        spec.resolve(NUM_LAYERS)


def test_resolve_exit_layer_message_names_model_range():
    with pytest.raises(SpecError, match=r"0\.\.3"):
        RerankSpec(exit_layer=4).resolve(NUM_LAYERS)


def test_resolve_accepts_every_valid_layer_combination():
    for e in range(NUM_LAYERS):
        for a in range(e + 1):
            for b in range(a, e + 1):
                spec = RerankSpec(exit_layer=e, band=(a, b), query_position=64 if a else None)
                resolved = spec.resolve(NUM_LAYERS)
                assert 0 <= resolved.band[0] <= resolved.band[1] <= resolved.exit_layer < NUM_LAYERS


def test_resolve_is_idempotent():
    once = RerankSpec(exit_layer=2).resolve(NUM_LAYERS)
    assert once.resolve(NUM_LAYERS) == once


# -- is_exact -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, exact",
    [
        (RerankSpec(), True),
        (RerankSpec.exact(), True),
        (RerankSpec(exit_layer=3, band=(0, 3)), True),
        (RerankSpec(system="another system prompt"), True),  # template strings do not change exactness
        (RerankSpec(exit_layer=2), False),
        (RerankSpec(band=(0, 2)), False),
        (RerankSpec(keep_ratio=0.5), False),
        (RerankSpec(query_position=64), False),
        (RerankSpec.tiny(), False),
    ],
)
def test_is_exact(spec, exact):
    assert spec.is_exact(NUM_LAYERS) is exact


def test_exact_spec_for_one_model_is_not_exact_for_a_deeper_one():
    spec = RerankSpec(exit_layer=3, band=(0, 3))
    assert spec.is_exact(4) and not spec.is_exact(6)


# -- (de)serialisation ----------------------------------------------------------------------------
SPECS = [
    RerankSpec(),
    RerankSpec.tiny(),
    RerankSpec(exit_layer=1, band=(1, 1), keep_ratio=0.3, guide="embedder:/models/emb", guide_layer=7,
               query_position=300, system="sys", instruction="inst", yes_token="Yes", no_token="No"),
]


@pytest.mark.parametrize("spec", SPECS)
def test_to_dict_from_dict_round_trip(spec):
    data = spec.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert RerankSpec.from_dict(data) == spec


@pytest.mark.parametrize("spec", SPECS)
def test_save_from_file_round_trip(spec, tmp_path):
    path = tmp_path / "minireranker.json"
    spec.save(path)
    assert RerankSpec.from_file(path) == spec
    assert json.loads(path.read_text(encoding="utf-8"))["schema_version"] == SCHEMA_VERSION


def test_resolved_spec_round_trips():
    spec = RerankSpec.tiny().resolve(NUM_LAYERS)
    assert RerankSpec.from_dict(spec.to_dict()) == spec


def test_from_dict_every_key_optional():
    assert RerankSpec.from_dict({}) == RerankSpec()
    assert RerankSpec.from_dict({"schema_version": SCHEMA_VERSION}) == RerankSpec()


def test_from_dict_rejects_unknown_field_and_lists_known_ones():
    with pytest.raises(SpecError, match="exit_layers") as info:
        RerankSpec.from_dict({"exit_layers": 2}, source="my.json")
    message = str(info.value)
    assert "my.json" in message and "exit_layer" in message.replace("exit_layers", "")


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_from_dict_rejects_other_schema_versions(version):
    with pytest.raises(SpecError, match="schema_version"):
        RerankSpec.from_dict({"schema_version": version})


@pytest.mark.parametrize("data", [[], "exact", 3, None])
def test_from_dict_rejects_non_objects(data):
    with pytest.raises(SpecError, match="JSON object"):
        RerankSpec.from_dict(data, source="x.json")


def test_from_dict_prefixes_field_errors_with_the_source():
    with pytest.raises(SpecError, match=r"my\.json: keep_ratio"):
        RerankSpec.from_dict({"keep_ratio": 2}, source="my.json")


def test_from_file_missing(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        RerankSpec.from_file(tmp_path / "nope.json")


def test_from_file_not_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(SpecError, match="not valid JSON") as info:
        RerankSpec.from_file(path)
    assert str(path) in str(info.value)


def test_from_file_field_error_names_the_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"band": [2, 1], "query_position": 8}), encoding="utf-8")
    with pytest.raises(SpecError, match="band") as info:
        RerankSpec.from_file(path)
    assert str(path) in str(info.value)


# -- the template's yes/no tokens -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from minireranker.export.tiny import write_tiny_checkpoint

    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)
    return tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("field", ["yes_token", "no_token"])
def test_template_rejects_multi_token_yes_or_no(tiny_tokenizer, field):
    from minireranker.runtime.template import VisionFirstTemplate

    spec = RerankSpec(**{field: "definitely yes"})
    with pytest.raises(TokenizerError, match=field) as info:
        VisionFirstTemplate(tiny_tokenizer, spec)
    assert "definitely yes" in str(info.value) and "minireranker.json" in str(info.value)


def test_template_accepts_default_yes_no(tiny_tokenizer):
    from minireranker.runtime.template import VisionFirstTemplate

    template = VisionFirstTemplate(tiny_tokenizer, RerankSpec())
    assert template.yes_id != template.no_id
    assert tiny_tokenizer.decode([template.yes_id]) == "yes"
    assert tiny_tokenizer.decode([template.no_id]) == "no"


def test_relative_embedder_in_a_spec_file_is_relative_to_that_file(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "minireranker.json").write_text(json.dumps({"guide": "embedder:../embedder"}))
    monkeypatch.chdir("/")  # the caller's directory must not matter
    spec = RerankSpec.from_file(tmp_path / "ckpt" / "minireranker.json")
    assert spec.guide == "embedder:" + str((tmp_path / "embedder").resolve())
    # in-memory specs (flags, dicts) keep the path as given: there is no file to be relative to
    assert RerankSpec.from_dict({"guide": "embedder:../embedder"}).guide == "embedder:../embedder"


# -- read_spec: the one reader of a user's spec (file, inline JSON, 'exact', --exact, the flags) ----------
APPROX = RerankSpec(exit_layer=2, band=(1, 2), keep_ratio=0.5, query_position=64)
APPROX_FLAGS = {"exit_layer": 2, "band": "1:2", "keep_ratio": 0.5, "guide": None, "query_position": 64}


def test_read_spec_nothing_given_is_none():
    assert read_spec(None) is None
    assert read_spec(None, exact=False, flags={name: None for name in APPROX_FLAGS}) is None


def test_read_spec_every_form_gives_the_same_spec(tmp_path):
    path = tmp_path / "approx.json"
    APPROX.save(path)
    file, inline = read_spec(str(path)), read_spec(json.dumps(APPROX.to_dict()))
    flags = read_spec(None, flags=APPROX_FLAGS)
    assert file.spec == inline.spec == flags.spec == APPROX
    assert (file.source, inline.source, flags.source) == (str(path), "inline spec", "flags")
    assert flags.given == {"exit_layer", "band", "keep_ratio", "query_position"}
    assert file.data == inline.data == APPROX.to_dict()  # the JSON as written, for `tiny --spec` to copy
    assert flags.data is None


@pytest.mark.parametrize("value", ["exact", " exact "])
def test_read_spec_exact_word_and_flag(value):
    assert read_spec(value).spec == RerankSpec.exact() == read_spec(None, exact=True).spec
    assert read_spec(value).given == frozenset() and read_spec(value).source == "exact"


def test_read_spec_given_names_only_the_fields_written(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "keep_ratio": 0.5}), encoding="utf-8")
    assert read_spec(str(path)).given == {"keep_ratio"}
    assert read_spec('{"exit_layer": 2}').given == {"exit_layer"}


def test_read_spec_relative_embedder_of_a_file_is_read_beside_it(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "minireranker.json").write_text('{"keep_ratio": 0.5, "guide": "embedder:../embedder"}')
    monkeypatch.chdir("/")
    spec = read_spec(str(tmp_path / "ckpt" / "minireranker.json")).spec
    assert spec.guide == "embedder:" + str((tmp_path / "embedder").resolve())
    assert read_spec('{"guide": "embedder:../embedder"}').spec.guide == "embedder:../embedder"  # inline: as given


@pytest.mark.parametrize("kwargs, parts", [
    ({"value": "exact", "exact": True}, ["--spec", "--exact", "--exit-layer"]),
    ({"exact": True, "flags": {"band": "0:1"}}, ["--exact", "--band"]),
    ({"value": "exact", "flags": {"exit_layer": 2}}, ["--spec", "--exit-layer"]),
])
def test_read_spec_refuses_two_forms_at_once(kwargs, parts):
    with pytest.raises(SpecError, match="choose one of") as info:
        read_spec(**kwargs)
    assert all(p in str(info.value) for p in parts), str(info.value)


@pytest.mark.parametrize("value, parts", [
    ("{not json", ["'{not json'", "not valid JSON", "give a JSON object or a file"]),
    ("absent.json", ["'absent.json'", "no such file", "inline JSON object", "'exact'"]),
    ('{"band": [2, 1], "query_position": 8}', ["inline spec", "A <= B"]),
    ("[1, 2]", ["no such file"]),  # not an object and not a file
])
def test_read_spec_errors_name_the_value_and_what_to_do(tmp_path, monkeypatch, value, parts):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        read_spec(value)
    assert all(p in str(info.value) for p in parts), str(info.value)


def test_read_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(SpecError, match="not valid JSON") as info:
        read_spec(str(bad))
    assert str(bad) in str(info.value)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"exit": 2}', encoding="utf-8")
    with pytest.raises(SpecError, match="unknown field") as info:
        read_spec(str(unknown))
    assert str(unknown) in str(info.value)


def test_read_spec_flag_values_are_checked_like_fields():
    with pytest.raises(SpecError, match="keep_ratio"):
        read_spec(None, flags={"keep_ratio": 1.5})
    with pytest.raises(SpecError, match="query_position"):
        read_spec(None, flags={"band": "1:2"})  # A > 0 without a fixed query position
    with pytest.raises(SpecError, match="unknown spec flag"):
        read_spec(None, flags={"exit": 2})


def test_read_spec_option_names_the_flag_in_messages():
    with pytest.raises(SpecError, match="^--demo-spec 'nope.json': no such file"):
        read_spec("nope.json", option="--demo-spec")


@pytest.mark.parametrize("value, expected", [("1:2", (1, 2)), ("0:0", (0, 0)), ((3, 4), (3, 4)), ([0, 1], (0, 1))])
def test_parse_band(value, expected):
    assert parse_band(value) == expected


@pytest.mark.parametrize("value", ["1-2", "1", "1:2:3", "a:b", ""])
def test_parse_band_refuses_other_forms(value):
    with pytest.raises(SpecError, match="--band must be A:B") as info:
        parse_band(value)
    assert repr(value) in str(info.value)
