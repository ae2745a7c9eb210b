"""attnlab.results on the checked-in bench fixtures (reports/testdata): DataFrames and records
against what the JSON says, read here with the json module; malformed files are InputError."""
import json
import pathlib

import pytest

import attnlab.results as results

TESTDATA = pathlib.Path(__file__).resolve().parent.parent.parent / "reports" / "testdata"
QUICK = TESTDATA / "quick.json"
ACCURACY = TESTDATA / "quick-accuracy.json"
TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

pd = pytest.importorskip("pandas", reason="pandas is not importable (python3-pandas)")


def _bench():
  with open(QUICK) as f:
    return json.load(f)


def _stripped(name):
  return "/".join(t for t in name.split("/") if t != "real_time")


def _variant_of(name):
  """The variant a case name names (docs/bench-json.md): the first token, but the second after
  `layer` and `grad`, and none for ceilings, micro-kernels and peers."""
  tokens = name.split("/")
  if tokens[0] in ("layer", "grad"):
    return None if tokens[1].startswith("peer_") else tokens[1]
  if tokens[0].startswith(("ceiling_", "peer_")) or tokens[0] == "ukernel":
    return None
  return tokens[0]


def test_fixture_is_there():
  assert QUICK.is_file() and ACCURACY.is_file(), f"missing fixtures in {TESTDATA}"


def test_to_dataframe_one_row_per_case():
  doc = _bench()
  df = results.to_dataframe(str(QUICK))
  assert isinstance(df, pd.DataFrame)
  for column in ("source", "name", "variant", "GFLOPS", "N", "time_s", "status"):
    assert column in df.columns, column
  names = {_stripped(b["name"]) for b in doc["benchmarks"]}
  assert len(df) == len(names) and set(df["name"]) == names
  assert set(df["source"]) == {doc["context"]["host_name"]}
  rows = df.set_index("name")
  for b in doc["benchmarks"]:
    row = rows.loc[_stripped(b["name"])]
    assert row["variant"] == _variant_of(b["name"]), b["name"]
    if "GFLOPS" in b:  # a counter, the JSON's value (one repetition: its median is itself)
      assert row["GFLOPS"] == b["GFLOPS"]
    params = dict(t.split(":", 1) for t in b["name"].split("/") if ":" in t)
    if "N" in params:  # a parameter, from the name
      assert row["N"] == int(params["N"])
    else:
      assert pd.isna(row["N"])
    assert row["time_s"] == b["real_time"] * TIME_UNIT_S[b["time_unit"]]
    assert row["status"] == "ok"


def test_variants_and_families_in_the_dataframe():
  df = results.to_dataframe(QUICK)
  names = [b["name"] for b in _bench()["benchmarks"]]
  assert set(df["variant"].dropna()) == {_variant_of(n) for n in names} - {None}
  assert set(df["family"]) == {n.split("/")[0] for n in names}
  assert {"ceiling_sgemm", "layer", "ukernel", "flash"} <= set(df["family"])


def test_records_agree_with_the_dataframe():
  recs = results.records(str(QUICK))
  df = results.to_dataframe(str(QUICK))
  assert [r["name"] for r in recs] == list(df["name"])
  for r, (_, row) in zip(recs, df.iterrows()):
    assert r["variant"] == row["variant"]
    if "GFLOPS" in r:
      assert r["GFLOPS"] == row["GFLOPS"]
    else:
      assert pd.isna(row["GFLOPS"])


def test_a_path_and_a_list_of_paths_read_the_same():
  one = results.to_dataframe(str(QUICK))
  for paths in ([str(QUICK)], (QUICK,), QUICK):
    other = results.to_dataframe(paths)
    pd.testing.assert_frame_equal(one, other)


def test_select_keeps_cases_with_every_token():
  recs = results.records(QUICK, select=["threads:1", "causal:1"])
  assert recs and all("threads:1" in r["name"].split("/") and "causal:1" in r["name"].split("/")
                      for r in recs)
  assert len(recs) < len(results.records(QUICK))


def test_accuracy_dataframe():
  with open(ACCURACY) as f:
    doc = json.load(f)
  for paths in (str(ACCURACY), [ACCURACY]):
    df = results.accuracy_dataframe(paths)
    assert list(df.columns) == list(results.ACCURACY_COLUMNS)
    assert len(df) == len(doc["results"])
    for r, (_, row) in zip(doc["results"], df.iterrows()):
      assert (row["variant"], row["N"], row["d"], row["mask"]) == (r["variant"], r["N"], r["d"],
                                                                   r["mask"])
      assert row["max_abs_error"] == r["max_abs_error"]
      assert row["bound_ratio"] == r["bound_ratio"]
      assert row["status"] == "ok" and row["source"] == doc["context"]["host_name"]


def _bad_files():
  good = _bench()
  wrong_counter = json.loads(json.dumps(good))
  wrong_counter["benchmarks"][1]["GFLOPS"] = "fast"
  no_context = {"benchmarks": good["benchmarks"]}
  bad_name = json.loads(json.dumps(good))
  bad_name["benchmarks"][0]["name"] = bad_name["benchmarks"][0]["run_name"] = "no params here"
  return {
      "empty": ("", "empty file"),
      "not_json": ("this is not json", "not valid JSON"),
      "top_level_list": ("[1, 2]", "the top level is a list"),
      "no_benchmarks": (json.dumps({"context": good["context"]}), "no \"benchmarks\" array"),
      "not_attnlab": (json.dumps(no_context), "not attnlab_bench output"),
      "counter_is_a_string": (json.dumps(wrong_counter), "GFLOPS is \"fast\" (a string)"),
      "bad_case_name": (json.dumps(bad_name), "not an attnlab_bench case name"),
  }


@pytest.mark.parametrize("bad", list(_bad_files()))
def test_malformed_file_is_an_input_error(tmp_path, bad):
  text, message = _bad_files()[bad]
  path = tmp_path / f"{bad}.json"
  path.write_text(text)
  with pytest.raises(results.InputError) as info:
    results.to_dataframe(str(path))
  assert isinstance(info.value, ValueError)
  assert str(path) in str(info.value) and message in str(info.value)


def test_missing_file_is_an_input_error(tmp_path):
  with pytest.raises(results.InputError, match="no such file"):
    results.to_dataframe(str(tmp_path / "absent.json"))
  with pytest.raises(results.InputError, match="no such file"):
    results.accuracy_dataframe(tmp_path / "absent.json")


def test_malformed_accuracy_file_is_an_input_error(tmp_path):
  with open(ACCURACY) as f:
    doc = json.load(f)
  doc["results"][3]["N"] = -5
  path = tmp_path / "acc.json"
  path.write_text(json.dumps(doc))
  with pytest.raises(results.InputError, match=r"results\[3\].*N is -5, want a positive"):
    results.accuracy_dataframe(str(path))


def test_truncated_file_reads_its_complete_entries(tmp_path):
  """A bench killed mid-write leaves a cut-off file: read up to the last complete entry."""
  text = QUICK.read_text()
  cut = text[:text.index('"name": "flash/N:256/d:64/causal:0/threads:2')]
  path = tmp_path / "cut.json"
  path.write_text(cut)
  recs = results.records(str(path))
  assert 0 < len(recs) < len(results.records(QUICK))
  assert "flash/N:256/d:64/causal:0/threads:2" not in {r["name"] for r in recs}
  assert "chunked/N:256/d:64/causal:0/threads:2" in {r["name"] for r in recs}
