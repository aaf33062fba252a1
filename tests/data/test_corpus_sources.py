"""Text sources: files (plain and compressed), datasets, TFDS; bad input."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import corpus, text
from mbert_jax.data.report import InputReport


def cfg(**kw):
    c = config_lib.pretraining_data_defaults()
    c.source = "text"
    c.sentence_split = False
    for k, v in kw.items():
        c[k] = v
    return c


def read(c):
    report = InputReport()
    return list(corpus.documents(c, report)), report


def test_sentence_splitting():
    assert text.split_sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]
    # Abbreviations, initials, dotted names and lower-case continuations do not split.
    assert text.split_sentences("See e.g. Fig. 3 by J. Smith. Call os.path.join() first.") == [
        "See e.g. Fig. 3 by J. Smith.",
        "Call os.path.join() first.",
    ]
    assert text.split_sentences('He said "stop." Then   he left.') == [
        'He said "stop."',
        "Then he left.",
    ]
    assert text.split_sentences("   ") == []


def test_prose_filter():
    assert text.is_prose("Return the number of items in the list.")
    assert not text.is_prose("x = foo(a, b) + [1, 2, 3]")
    assert not text.is_prose("Customizing Attribute Access")  # a heading: no function word


def test_blank_lines_separate_documents_and_files_never_merge(tmp_path):
    (tmp_path / "a.txt").write_text("one a.\ntwo a.\n\n\n\nthree a.\n")
    (tmp_path / "b.txt").write_text(
        "\ufeffFirst bee. Second bee.\nThird bee."
    )  # BOM, no final newline
    docs, report = read(cfg(text_files=str(tmp_path / "*.txt")))
    assert docs == [["one a.", "two a."], ["three a."], ["First bee. Second bee.", "Third bee."]]
    docs, _ = read(cfg(text_files=str(tmp_path / "b.txt"), sentence_split=True))
    assert docs == [["First bee.", "Second bee.", "Third bee."]]
    assert report.counts["files"] == 2 and report.counts["lines"] == 5


@pytest.mark.parametrize(
    "suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)]
)
def test_compressed_files(tmp_path, suffix, opener):
    path = tmp_path / f"c.txt{suffix}"
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("alpha.\nbeta.\n\ngamma.\n")
    docs, _ = read(cfg(text_files=str(path)))
    assert docs == [["alpha.", "beta."], ["gamma."]]


def test_truncated_archive_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"alpha.\n" * 1000)[:40])
    with pytest.raises(corpus.CorpusError, match="c.txt.gz: cannot read"):
        read(cfg(text_files=str(path)))


def test_empty_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n \n\t\n")
    (tmp_path / "full.txt").write_text("content here.\n")
    docs, report = read(cfg(text_files=str(tmp_path / "*.txt")))
    assert docs == [["content here."]]
    assert report.notes["empty files skipped"] == 2
    assert str(tmp_path / "blank.txt") in report.where["empty files skipped"]
    assert "2 x empty files skipped" in report.summary()


def test_non_utf8_lines(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line.\ncaf\xe9 latin-1.\nanother good line.\n")
    docs, report = read(cfg(text_files=str(path)))
    assert docs == [["good line.", "another good line."]]
    assert report.notes["non-UTF-8 lines skipped"] == 1
    assert report.where["non-UTF-8 lines skipped"] == [f"{path}:2"]
    with pytest.raises(corpus.CorpusError, match=r"bad.txt:2: not valid UTF-8 \(byte 0xe9"):
        read(cfg(text_files=str(path), on_bad_utf8="error"))
    docs, report = read(cfg(text_files=str(path), on_bad_utf8="replace"))
    assert docs[0][1] == "caf\ufffd latin-1."
    assert sum(report.notes.values()) == 1


def test_globs_and_config_errors(tmp_path):
    with pytest.raises(corpus.CorpusError, match="matches no file"):
        read(cfg(text_files=str(tmp_path / "nothing*.txt")))
    with pytest.raises(corpus.CorpusError, match="is empty"):
        read(cfg(text_files=""))
    (tmp_path / "sub").mkdir()
    with pytest.raises(corpus.CorpusError, match="is a directory"):
        read(cfg(text_files=str(tmp_path / "sub")))
    with pytest.raises(corpus.CorpusError, match="valid sources"):
        read(cfg(source="web"))
    # Several comma-separated globs, each file once, in pattern order.
    (tmp_path / "b.txt").write_text("b.\n")
    (tmp_path / "a.txt").write_text("a.\n")
    files = corpus.expand_globs(f"{tmp_path}/b.txt, {tmp_path}/*.txt")
    assert [p.name for p in files] == ["b.txt", "a.txt"]


def test_fingerprint_changes_with_the_files(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one.\n")
    c = cfg(text_files=str(path))
    before = corpus.fingerprint(c)
    assert corpus.fingerprint(c) == before
    path.write_text("one, longer.\n")
    assert corpus.fingerprint(c) != before


def test_datasets_from_disk_and_json(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {
        "text": ["First doc. Second sentence.\nNew line.", "", None, "Other doc."],
        "id": [0, 1, 2, 3],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    c = cfg(source="hf", hf_disk_path=str(tmp_path / "ds"), sentence_split=True)
    docs, report = read(c)
    assert docs == [["First doc.", "Second sentence.", "New line."], ["Other doc."]]
    assert report.notes == {"empty rows skipped": 1, "rows without text skipped": 1}
    assert corpus.fingerprint(c)["rows"] == 4

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in ["Alpha one.", "Beta two."]))
    c = cfg(source="hf", hf_path="json", hf_data_files=str(path), text_field="body")
    c.cache_dir = str(tmp_path / "hfcache")
    docs, _ = read(c)
    assert docs == [["Alpha one."], ["Beta two."]]
    with pytest.raises(corpus.CorpusError, match="no column data.text_field='text'"):
        read(cfg(source="hf", hf_path="json", hf_data_files=str(path)))


@pytest.mark.slow
def test_tfds_by_name_from_a_local_data_dir(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, t in enumerate(["Doc one. Has two.", "Doc two."]):
                yield i, {"text": t}

    TinyCorpus(data_dir=str(tmp_path)).download_and_prepare()
    c = cfg(
        source="tfds", tfds_name="tiny_corpus", tfds_data_dir=str(tmp_path), sentence_split=True
    )
    docs, report = read(c)
    assert sorted(docs) == [["Doc one.", "Has two."], ["Doc two."]]
    assert corpus.fingerprint(c)["files"]
    with pytest.raises(corpus.CorpusError, match="cannot open TFDS dataset 'absent_corpus'"):
        read(cfg(source="tfds", tfds_name="absent_corpus", tfds_data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "source, fix",
    [
        ("text files a/*.txt", "give files with text in data.text_files"),
        ("datasets ds [train]", "check data.hf_split and data.text_field"),
        ("tfds wiki [train]", "check data.tfds_split and data.text_field"),
    ],
)
def test_a_source_without_text_is_refused_with_its_own_fix(source, fix):
    report = InputReport(source=source)
    report.count("rows", 0)
    report.note("empty rows skipped", "ds:0", 3)
    with pytest.raises(corpus.CorpusError) as e:
        corpus.check_read(report)
    message = str(e.value)
    assert message.startswith(f"no text to train on ({source}: ") and message.endswith(fix)
    assert "3 x empty rows skipped" in message and "\n" not in message
    report.count("rows", 5)
    report.count("tokens", 40)
    corpus.check_read(report)  # some text: accepted
