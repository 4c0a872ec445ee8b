"""Tests for :mod:`hybridrag.sources`: files and folders to documents, with a skip report.

Every fixture file is generated in ``tmp_path`` (PDFs are written by hand, byte by byte,
with a real text content stream, and read back with pypdf). The report is checked to
account for every file that did not become a document, each with its reason.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridrag import sources
from hybridrag.sources import (
    SkipReport,
    decode_bytes,
    html_to_text,
    iter_documents,
    join_title_text,
    read_pdf_text,
    root_labels,
)
from hybridrag.types import Document

# --------------------------------------------------------------------------- helpers


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text stream per page, correct xref offsets."""
    objs: list[bytes] = []

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    pages_id = len(objs) + 2 * len(pages) + 1
    kids = []
    for lines in pages:
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({esc}) Tj T*")
        ops.append("ET")
        data = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
        kids.append(add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (pages_id, content, font)
        ))
    refs = b" ".join(b"%d 0 R" % k for k in kids)
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    info = add(b"<< /Title (%s) >>" % title.encode("latin-1")) if title else None
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    trailer = b"<< /Size %d /Root %d 0 R" % (len(objs) + 1, catalog)
    if info:
        trailer += b" /Info %d 0 R" % info
    out += b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def write(path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode(encoding)
    path.write_bytes(data)
    return path


def collect(paths: Any, **kw: Any) -> tuple[dict[str, Document], SkipReport]:
    report = SkipReport()
    docs = list(iter_documents(paths, report=report, **kw))
    by_id = {d.id: d for d in docs}
    assert len(by_id) == len(docs), f"duplicate ids: {[d.id for d in docs]}"
    return by_id, report


def reasons(report: SkipReport, root: Path | None = None) -> dict[str, str]:
    """``{file name, or path relative to root (plus :line): reason}``; one entry per skip."""
    out: dict[str, str] = {}
    for s in report:
        key = Path(s.path).relative_to(root).as_posix() if root else Path(s.path).name
        key += f":{s.line}" if s.line is not None else ""
        assert key not in out, f"two skips for {key}"
        out[key] = s.reason
    return out


FRENCH = "Le café est très bon. Ça coûte trois euros, déjà payé; naïve élève à la bibliothèque."


# --------------------------------------------------------------------------- plain formats


def test_txt_and_md(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "line one\r\nline two\rline three\n")
    write(tmp_path / "notes" / "b.md", "# Title\n\nSome *markdown* text.\n")
    docs, report = collect(tmp_path)
    assert sorted(docs) == ["a.txt", "notes/b.md"]
    assert docs["a.txt"].text == "line one\nline two\nline three\n"  # newlines normalised, nothing else
    assert docs["notes/b.md"].text == "# Title\n\nSome *markdown* text.\n"
    assert docs["a.txt"].metadata == {"source": "a.txt", "format": "txt", "encoding": "utf-8",
                                      "root": str(tmp_path)}
    assert docs["notes/b.md"].metadata["format"] == "md"
    assert not report and report.summary() == "0 skipped"


def test_walk_is_sorted_and_deterministic(tmp_path: Path) -> None:
    for name in ["zeta.txt", "Alpha.txt", "m/b.txt", "m/a.txt", "beta.md"]:
        write(tmp_path / name, f"text of {name}")
    ids = [d.id for d in iter_documents(tmp_path)]
    assert ids == ["Alpha.txt", "beta.md", "m/a.txt", "m/b.txt", "zeta.txt"]
    assert [d.id for d in iter_documents(tmp_path)] == ids


def test_file_named_directly_and_several_roots(tmp_path: Path) -> None:
    f = write(tmp_path / "deep" / "x.txt", "hello")
    other = write(tmp_path / "other" / "y.md", "world")
    docs, _ = collect([f, other.parent])  # several roots: ids carry the root's name
    assert sorted(docs) == ["other/y.md", "x.txt"]
    docs, _ = collect(str(f))
    assert list(docs) == ["x.txt"]
    for doc in docs.values():  # root / source is the file the document came from
        assert Path(doc.metadata["root"]) / doc.metadata["source"] == f


def test_several_roots_never_collide(tmp_path: Path) -> None:
    for proj in ("projA", "projB", "x/docs", "y/docs"):
        write(tmp_path / proj / "README.md", f"readme of {proj}")
        write(tmp_path / proj / "data.jsonl", json.dumps({"text": f"record of {proj}"}) + "\n")
    roots = [tmp_path / p for p in ("projA", "projB", "x/docs", "y/docs")]
    docs, report = collect(roots)
    assert not report
    assert sorted(docs) == sorted(f"{label}/{name}" for label in ("projA", "projB", "x/docs", "y/docs")
                                  for name in ("README.md", "data.jsonl#1"))
    assert docs["x/docs/README.md"].text == "readme of x/docs"
    for doc in docs.values():
        assert (Path(doc.metadata["root"]) / doc.metadata["source"].split("#")[0]).is_file()
    again, _ = collect(list(reversed(roots)))  # same roots, same ids, whatever the order
    assert sorted(again) == sorted(docs)
    assert root_labels(["/a/docs", "/b/docs", "/c/notes"]) == ["a/docs", "b/docs", "notes"]
    one, _ = collect(tmp_path / "projA")  # one root: ids as before, relative to it
    assert sorted(one) == ["README.md", "data.jsonl#1"]


def test_html_reduced_to_text(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>My  Page</title>
    <style>body { color: red; }</style><script>var x = "<p>not text</p>";</script></head>
    <body><h1>Heading</h1><p>First   paragraph with <b>bold</b> &amp; entities &eacute;.</p>
    <div>Second<br>line</div><pre>keep
   this</pre><!-- a comment --><noscript>no</noscript><ul><li>one</li><li>two</li></ul></body></html>"""
    write(tmp_path / "page.html", html)
    write(tmp_path / "page2.htm", "<p>short</p>")
    docs, report = collect(tmp_path)
    assert not report
    doc = docs["page.html"]
    # Blocks are separated by one blank line (paragraphs for the chunker), <br> by a line break,
    # <pre> keeps its own line breaks and indentation.
    assert doc.text == ("My Page\n\nHeading\n\nFirst paragraph with bold & entities é.\n\nSecond\nline\n\n"
                        "keep\n   this\n\none\n\ntwo")
    assert "color" not in doc.text and "var x" not in doc.text and "comment" not in doc.text
    assert doc.metadata["title"] == "My Page"
    assert doc.metadata["format"] == "html"
    assert docs["page2.htm"].text == "short"


def test_html_declared_charset(tmp_path: Path) -> None:
    html = f'<html><head><meta charset="iso-8859-1"></head><body><p>{FRENCH}</p></body></html>'
    write(tmp_path / "latin.html", html, encoding="latin-1")
    docs, _ = collect(tmp_path)
    assert docs["latin.html"].text == FRENCH
    assert docs["latin.html"].metadata["encoding"] == "iso-8859-1"


def test_html_to_text_helper() -> None:
    text, title = html_to_text("<title> T </title><p>a</p><p>b</p><script>x</script>")
    assert (text, title) == ("T\n\na\n\nb", "T")


def test_pdf_text(tmp_path: Path) -> None:
    write(tmp_path / "paper.pdf", make_pdf(
        [["Hybrid retrieval in PDF form.", "Second line (with parens)."], ["Page two text."]], title="A Paper"))
    docs, report = collect(tmp_path)
    assert not report
    doc = docs["paper.pdf"]
    assert doc.text == "Hybrid retrieval in PDF form.\nSecond line (with parens).\n\nPage two text."
    assert doc.metadata == {"source": "paper.pdf", "format": "pdf", "pages": 2, "title": "A Paper",
                            "root": str(tmp_path)}
    # The helper agrees with pypdf itself.
    import pypdf

    ref = [p.extract_text().strip() for p in pypdf.PdfReader(str(tmp_path / "paper.pdf")).pages]
    assert read_pdf_text(tmp_path / "paper.pdf")[0] == "\n\n".join(ref)


def test_pdf_problems_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "broken.pdf", b"%PDF-1.4\nthis is not really a pdf\n")
    write(tmp_path / "blank.pdf", make_pdf([[]]))
    write(tmp_path / "ok.pdf", make_pdf([["fine"]]))
    docs, report = collect(tmp_path)
    assert list(docs) == ["ok.pdf"]
    got = {Path(s.path).name: s for s in report}
    assert got["broken.pdf"].reason == "unreadable" and "PDF error" in got["broken.pdf"].detail
    assert got["blank.pdf"].reason == "empty"
    # Without pypdf: reported with the install hint, other files still read.
    monkeypatch.setitem(sys.modules, "pypdf", None)
    write(tmp_path / "t.txt", "text")
    docs, report = collect(tmp_path)
    assert list(docs) == ["t.txt"]
    missing = [s for s in report if s.reason == "missing dependency"]
    assert {Path(s.path).name for s in missing} == {"broken.pdf", "blank.pdf", "ok.pdf"}
    assert all("pip install 'hybridrag[pdf]'" in s.detail for s in missing)
    with pytest.raises(ImportError, match=r"hybridrag\[pdf\]"):
        read_pdf_text(tmp_path / "ok.pdf")


# --------------------------------------------------------------------------- records: JSON, JSON lines, CSV


def test_json_object_and_list(tmp_path: Path) -> None:
    write(tmp_path / "one.json", json.dumps({"text": "single object", "lang": "en"}))
    write(tmp_path / "many.json", json.dumps([
        {"id": "a", "text": "first", "metadata": {"year": 2020}},
        {"text": "no id here"},
        {"id": 7, "title": "T", "text": "with title"},
        {"id": "bad", "text": 42},
        "not an object",
    ]))
    docs, report = collect(tmp_path)
    assert sorted(docs) == ["7", "a", "many.json#2", "one.json"]
    assert docs["one.json"].text == "single object"
    assert docs["one.json"].metadata == {"source": "one.json", "format": "json", "position": 1, "lang": "en",
                                         "root": str(tmp_path)}
    assert docs["a"].metadata["year"] == 2020
    assert docs["7"].text == "T\n\nwith title" and docs["7"].metadata["title"] == "T"
    assert reasons(report) == {"many.json:4": "bad record", "many.json:5": "bad record"}


def test_beir_corpus_jsonl(tmp_path: Path) -> None:
    rows = [
        {"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture.",
         "metadata": {"pmid": 1}},
        {"_id": "5836", "title": "", "text": "No title here."},
        {"_id": "7912", "title": "Only title", "text": ""},
    ]
    write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    docs, report = collect(tmp_path)
    assert list(docs) == ["4983", "5836", "7912"]
    assert docs["4983"].text == join_title_text("Microstructural development", "Alterations of the architecture.")
    assert docs["4983"].text == "Microstructural development\n\nAlterations of the architecture."
    assert docs["4983"].metadata == {"source": "corpus.jsonl", "format": "jsonl", "position": 1,
                                     "title": "Microstructural development", "pmid": 1, "root": str(tmp_path)}
    assert docs["5836"].text == "No title here." and "title" not in docs["5836"].metadata
    assert docs["7912"].text == "Only title\n\n"
    assert not report


def test_bundled_scifact_sample_reads_completely() -> None:
    folder = Path(sources.__file__).parent / "data" / "scifact-sample"
    report = SkipReport()
    docs = list(iter_documents(folder / "corpus.jsonl", report=report))
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh if line.strip()]
    assert [d.id for d in docs] == [r["_id"] for r in raw]
    assert [d.text for d in docs] == [join_title_text(r.get("title", ""), r["text"]) for r in raw]
    assert not report


def test_one_bad_jsonl_line_does_not_stop_the_rest(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "d1", "text": "one"}),
        '{"id": "d2", "text": "broken',            # bad json
        "",                                          # blank: ignored, not a document
        json.dumps({"id": "d3", "body": "no text field"}),  # bad record
        "[1, 2]",                                    # bad record
        json.dumps({"id": "d5", "text": "   "}),    # empty
        json.dumps({"id": True, "text": "bool id"}),  # bad record
        json.dumps({"id": "d7", "text": "seven"}),
        b"\xff\xfe not utf-8 \xe9",                # invalid UTF-8: decoded alone, then bad json
        json.dumps({"id": "d9", "text": "caf\u00e9 \U0001f680"}, ensure_ascii=False),
    ]
    write(tmp_path / "c.jsonl", b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in lines) + b"\n")
    docs, report = collect(tmp_path)
    assert list(docs) == ["d1", "d7", "d9"]
    assert docs["d9"].text == "caf\u00e9 \U0001f680"
    assert reasons(report) == {"c.jsonl:2": "bad json", "c.jsonl:4": "bad record", "c.jsonl:5": "bad record",
                               "c.jsonl:6": "empty", "c.jsonl:7": "bad record", "c.jsonl:9": "bad json"}
    assert all(s.detail for s in report)


def test_jsonl_with_only_bad_lines_is_reported_as_empty(tmp_path: Path) -> None:
    write(tmp_path / "bad.jsonl", "not json\n{\n")
    docs, report = collect(tmp_path)
    assert not docs
    assert [(Path(s.path).name, s.line, s.reason) for s in report] == [
        ("bad.jsonl", 1, "bad json"), ("bad.jsonl", 2, "bad json"), ("bad.jsonl", None, "empty")]


def test_jsonl_custom_fields_and_utf16(tmp_path: Path) -> None:
    rows = [{"doc": "x1", "body": "first body", "heading": "H"}, {"doc": "x2", "body": "second"}]
    data = codecs.BOM_UTF16_LE + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-16-le")
    write(tmp_path / "u16.jsonl", data)
    docs, report = collect(tmp_path, id_field="doc", text_field="body", title_field="heading")
    assert not report
    assert docs["x1"].text == "H\n\nfirst body" and docs["x2"].text == "second"


def test_csv_with_chosen_text_column(tmp_path: Path) -> None:
    write(tmp_path / "t.csv", 'key,body,title,year\nk1,"first, with comma",T1,2020\nk2,"multi\nline",,2021\nk3,,,2022\n')
    docs, report = collect(tmp_path, csv_text_column="body", csv_id_column="key")
    assert sorted(docs) == ["k1", "k2"]
    assert docs["k1"].text == "T1\n\nfirst, with comma"
    assert docs["k1"].metadata == {"source": "t.csv", "format": "csv", "position": 1, "title": "T1", "year": "2020",
                                   "root": str(tmp_path)}
    assert docs["k2"].text == "multi\nline"
    assert reasons(report) == {"t.csv:3": "empty"}
    # Without an id column: row numbers.
    docs, _ = collect(tmp_path, csv_text_column="body")
    assert sorted(docs) == ["t.csv#1", "t.csv#2"]
    # A missing column is reported for the file, never guessed.
    docs, report = collect(tmp_path, csv_text_column="nope")
    assert not docs
    (entry,) = report
    assert entry.reason == "bad csv" and "nope" in entry.detail and "body" in entry.detail
    docs, report = collect(tmp_path, csv_text_column="body", csv_id_column="missing")
    assert not docs and [s.reason for s in report] == ["bad csv"]


def test_csv_default_text_column(tmp_path: Path) -> None:
    write(tmp_path / "d.csv", "id,text\n1,hello\n2,world\n")
    docs, _ = collect(tmp_path)
    assert {k: d.text for k, d in docs.items()} == {"1": "hello", "2": "world"}


# --------------------------------------------------------------------------- include / exclude


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for name in ["a.md", "b.txt", "docs/c.md", "docs/drafts/d.md", "drafts/e.md", "docs/f.json"]:
        write(tmp_path / name, json.dumps({"text": name}) if name.endswith(".json") else f"text {name}")
    docs, report = collect(tmp_path, include="*.md", exclude=["drafts"])
    assert sorted(docs) == ["a.md", "docs/c.md"]
    assert reasons(report, tmp_path) == {"b.txt": "not included", "docs/f.json": "not included",
                                         "docs/drafts": "excluded", "drafts": "excluded"}
    # A pattern with "/" matches the relative path; "*" crosses "/"; "**/" also matches at the top.
    docs, _ = collect(tmp_path, include="docs/*")
    assert sorted(docs) == ["docs/c.md", "docs/drafts/d.md", "docs/f.json"]
    docs, _ = collect(tmp_path, include="**/*.md", exclude="docs/drafts/*")
    assert sorted(docs) == ["a.md", "docs/c.md", "drafts/e.md"]
    docs, report = collect(tmp_path, include=["*.txt", "*.json"])
    assert sorted(docs) == ["b.txt", "docs/f.json"]
    assert sum(1 for s in report if s.reason == "not included") == 4


def test_bad_arguments(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "x")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        iter_documents(tmp_path / "nowhere")  # raised at the call, before iteration
    with pytest.raises(ValueError, match="max_bytes"):
        iter_documents(tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="max_file_bytes"):
        iter_documents(tmp_path, max_file_bytes="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_bytes"):
        iter_documents(tmp_path, max_bytes=True)
    with pytest.raises(TypeError, match="include"):
        iter_documents(tmp_path, include=[""])
    with pytest.raises(TypeError, match="exclude"):
        iter_documents(tmp_path, exclude=[3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="paths"):
        iter_documents(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text_field"):
        iter_documents(tmp_path, text_field="")
    with pytest.raises(TypeError, match="csv_text_column"):
        iter_documents(tmp_path, csv_text_column="")


# --------------------------------------------------------------------------- encodings


def test_decode_bytes() -> None:
    text = "Grüße, café, naïve — “quotes” 中文 🚀"
    assert decode_bytes(text.encode("utf-8")) == (text, "utf-8")
    assert decode_bytes(codecs.BOM_UTF8 + text.encode("utf-8")) == (text, "utf-8-sig")
    for enc, bom in (("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                     ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE)):
        got, name = decode_bytes(bom + text.encode(enc))
        assert got == text, enc
        assert name == ("utf-16" if "16" in enc else "utf-32")
    got, name = decode_bytes(FRENCH.encode("latin-1"))
    assert got == FRENCH
    assert name in ("cp1252", "latin-1", "iso8859_1")
    # Never raises, whatever the bytes.
    assert isinstance(decode_bytes(bytes(range(256)))[0], str)


@pytest.mark.parametrize("text", [
    FRENCH,
    "El niño comió piñas el año pasado; ¿qué más? ¡Olé!",
    "Grüße aus München, schöne Straße.",
])
def test_latin1_file(tmp_path: Path, text: str) -> None:
    write(tmp_path / "latin.txt", text, encoding="latin-1")
    docs, report = collect(tmp_path)
    assert not report
    assert docs["latin.txt"].text == text


@pytest.mark.parametrize("encoding,bom", [
    ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-8", codecs.BOM_UTF8),
])
def test_bom_files(tmp_path: Path, encoding: str, bom: bytes) -> None:
    text = "Unicode with a BOM: café, 中文, 🚀\r\nsecond line\n"
    write(tmp_path / "bom.txt", bom + text.encode(encoding))
    write(tmp_path / "bom.csv", bom + "id,text\n1,café\n".encode(encoding))
    write(tmp_path / "bom.json", bom + json.dumps({"id": "j", "text": "中文"}, ensure_ascii=False).encode(encoding))
    docs, report = collect(tmp_path)
    assert not report, report.summary()
    assert docs["bom.txt"].text == "Unicode with a BOM: café, 中文, 🚀\nsecond line\n"
    assert docs["1"].text == "café" and docs["j"].text == "中文"


def test_utf16_without_bom_is_binary(tmp_path: Path) -> None:
    write(tmp_path / "nobom.txt", "hello".encode("utf-16-le"))
    docs, report = collect(tmp_path)
    assert not docs and reasons(report) == {"nobom.txt": "binary"}


# --------------------------------------------------------------------------- the skip report


def test_every_problem_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "good text")
    write(tmp_path / "binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "blank.md", "  \n\t\n")
    write(tmp_path / "big.txt", "x" * 2000)
    write(tmp_path / "image.png", b"\x89PNG")
    write(tmp_path / "noext", "text without extension")
    write(tmp_path / "broken.json", "{not json")
    write(tmp_path / "scalar.json", "42")
    write(tmp_path / "big.jsonl", json.dumps({"id": "small", "text": "ok"}) + "\n"
          + json.dumps({"id": "large", "text": "y" * 2000}) + "\n")
    os.mkfifo(tmp_path / "pipe.txt")
    docs, report = collect(tmp_path, max_bytes=1000)
    assert sorted(docs) == ["good.txt", "small"]
    assert reasons(report) == {
        "big.jsonl:2": "too large",
        "big.txt": "too large",
        "binary.txt": "binary",
        "blank.md": "empty",
        "broken.json:1": "bad json",
        "empty.txt": "empty",
        "image.png": "unsupported extension",
        "noext": "unsupported extension",
        "pipe.txt": "not a regular file",
        "scalar.json": "bad json",
    }
    assert all(s.detail for s in report), [str(s) for s in report]
    assert report.by_reason()["too large"] == 2
    assert report.summary().startswith(f"{len(report)} skipped: ")
    # Nothing is silently dropped: every file is a document source or in the report.
    seen = {Path(s.path).name for s in report} | {"good.txt", "big.jsonl"}
    assert seen == {p.name for p in tmp_path.iterdir()}


def test_too_large_file_is_not_read(tmp_path: Path) -> None:
    write(tmp_path / "huge.txt", "z" * 5000)
    write(tmp_path / "huge.json", json.dumps({"text": "z" * 5000}))
    docs, report = collect(tmp_path, max_file_bytes=1000)
    assert not docs
    assert reasons(report) == {"huge.txt": "too large", "huge.json": "too large"}
    assert all("max_file_bytes" in s.detail for s in report)


def test_unreadable_file(tmp_path: Path) -> None:
    f = write(tmp_path / "secret.txt", "secret text")
    write(tmp_path / "open.txt", "open text")
    f.chmod(0)
    try:
        docs, report = collect(tmp_path)
    finally:
        f.chmod(0o644)
    if os.geteuid() == 0:
        # Root reads a mode-000 file: it is ingested like any other.
        assert sorted(docs) == ["open.txt", "secret.txt"] and not report
        assert docs["secret.txt"].text == "secret text"
    else:
        assert sorted(docs) == ["open.txt"]
        assert reasons(report) == {"secret.txt": "unreadable"}
        assert list(report)[0].detail


def test_unreadable_folder(tmp_path: Path) -> None:
    write(tmp_path / "locked" / "inside.txt", "inside")
    write(tmp_path / "a.txt", "outside")
    (tmp_path / "locked").chmod(0)
    try:
        docs, report = collect(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    if os.geteuid() == 0:
        assert sorted(docs) == ["a.txt", "locked/inside.txt"] and not report
    else:
        assert sorted(docs) == ["a.txt"]
        assert reasons(report) == {"locked": "unreadable"}


def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = write(tmp_path / "outside" / "secret.txt", "secret outside the root")
    write(root / "real" / "doc.txt", "inside text")
    (root / "to_outside.txt").symlink_to(outside)
    (root / "to_outside_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "inside_link.txt").symlink_to(root / "real" / "doc.txt")
    (root / "broken.txt").symlink_to(root / "missing.txt")
    (root / "real" / "loop").symlink_to(root / "real", target_is_directory=True)
    docs, report = collect(root)
    assert sorted(docs) == ["inside_link.txt", "real/doc.txt"]
    assert docs["inside_link.txt"].text == "inside text"
    assert all("secret" not in d.text for d in docs.values())
    assert reasons(report) == {
        "to_outside.txt": "symlink outside root",
        "to_outside_dir": "symlink outside root",
        "broken.txt": "unreadable",
        "loop": "symlink loop",
    }
    outside_entries = [s for s in report if s.reason == "symlink outside root"]
    assert all(str(outside.parent.resolve()) in s.detail for s in outside_entries)


def test_skips_are_logged_without_a_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "good.txt", "fine")
    write(tmp_path / "empty.txt", b"")
    with caplog.at_level(logging.WARNING, logger="hybridrag.sources"):
        docs = list(iter_documents(tmp_path))
    assert [d.id for d in docs] == ["good.txt"]
    assert any("empty.txt" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)


def test_skipped_file_str() -> None:
    report = SkipReport()
    report.add("a/b.jsonl", "bad json", "Expecting value", line=3)
    report.add("c.bin", "binary")
    assert [str(s) for s in report] == ["a/b.jsonl:3: bad json (Expecting value)", "c.bin: binary"]
    assert report.by_reason() == {"bad json": 1, "binary": 1}
    assert report.summary() == "2 skipped: bad json 1, binary 1"
    assert len(report) == 2 and bool(report)


# --------------------------------------------------------------------------- bad records among good ones

def bad_jsonl_lines() -> dict[str, bytes]:
    """One JSON line of each kind of bad record, by the reason it must be skipped for."""
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "duplicate id (in the file)": json.dumps({"id": "g0", "text": "again"}).encode(),
        "duplicate id (across files)": json.dumps({"id": "other-1", "text": "again"}).encode(),
        "NUL in id": json.dumps({"id": "a\u0000b", "text": "t"}).encode(),
        "lone surrogate in id": b'{"id": "x\\ud800", "text": "t"}',
        "NaN field": b'{"id": "nan", "text": "t", "score": NaN}',
        "Infinity field": b'{"id": "inf", "text": "t", "score": -Infinity}',
        "deep nesting (parse)": ('{"id": "deep", "text": "t", "m": ' + deep + "}").encode(),
        "deep nesting (metadata)": ('{"id": "deep2", "text": "t", "m": ' + "[" * 200 + "]" * 200 + "}").encode(),
        "non-object line": b"[1, 2, 3]",
        "invalid JSON": b'{"id": "broken", "text": ',
        "missing text": json.dumps({"id": "notext", "body": "x"}).encode(),
        "non-string id": json.dumps({"id": [1], "text": "t"}).encode(),
        "huge line": json.dumps({"id": "huge", "text": "x" * 300_000}).encode(),
    }


EXPECTED_REASON = {
    "duplicate id (in the file)": "duplicate id", "duplicate id (across files)": "duplicate id",
    "NUL in id": "bad record", "lone surrogate in id": "bad record", "NaN field": "bad json",
    "Infinity field": "bad json", "deep nesting (parse)": "bad json", "deep nesting (metadata)": "bad record",
    "non-object line": "bad record", "invalid JSON": "bad json", "missing text": "bad record",
    "non-string id": "bad record", "huge line": "too large",
}


def write_bad_corpus(folder: Path) -> dict[int, str]:
    """``folder/data.jsonl``: 100 good records with every kind of bad record between them
    (and ``folder/a_other.jsonl``, read first, holding id ``other-1``); returns
    ``{line: kind}`` of the bad lines."""
    write(folder / "a_other.jsonl", json.dumps({"id": "other-1", "text": "first reading"}) + "\n")
    lines: list[bytes] = []
    bad_at: dict[int, str] = {}
    bad = list(bad_jsonl_lines().items())
    for i in range(100):
        lines.append(json.dumps({"id": f"g{i}", "text": f"good record number {i} about topic{i}"}).encode())
        if i % 7 == 3 and bad:
            kind, line = bad.pop(0)
            lines.append(line)
            bad_at[len(lines)] = kind
    assert not bad
    write(folder / "data.jsonl", b"\n".join(lines) + b"\n")
    return bad_at


def test_every_kind_of_bad_record_is_skipped_with_its_line(tmp_path: Path) -> None:
    bad_at = write_bad_corpus(tmp_path)
    docs, report = collect(tmp_path, max_bytes=2000, max_file_bytes=250_000)
    assert sorted(docs) == sorted([f"g{i}" for i in range(100)] + ["other-1"])
    assert docs["other-1"].text == "first reading" and docs["g0"].text == "good record number 0 about topic0"
    assert reasons(report) == {f"data.jsonl:{line}": EXPECTED_REASON[kind] for line, kind in bad_at.items()}
    by_line = {s.line: s for s in report}
    dup = next(line for line, kind in bad_at.items() if kind == "duplicate id (across files)")
    assert "a_other.jsonl:1" in by_line[dup].detail
    nested = next(line for line, kind in bad_at.items() if kind == "deep nesting (metadata)")
    assert "nested more than" in by_line[nested].detail and "'deep2'" in by_line[nested].detail
    surrogate = next(line for line, kind in bad_at.items() if kind == "lone surrogate in id")
    assert "surrogate" in by_line[surrogate].detail


def test_deeply_nested_json_file_is_bad_json(tmp_path: Path) -> None:
    write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)
    docs, report = collect(tmp_path)
    assert not docs and reasons(report) == {"deep.json": "bad json"}


# --------------------------------------------------------------------------- nearly-UTF-8 files

def test_nearly_utf8_file_is_utf8_with_a_warning(tmp_path: Path) -> None:
    good = ("Le café est très bon, déjà payé. " * 20).encode("utf-8")
    write(tmp_path / "mostly.txt", good[:100] + b"\xff\xfe" + good[100:300] + b"\xe9" + good[300:])
    write(tmp_path / "lines.jsonl", json.dumps({"id": "j1", "text": "déjà"}, ensure_ascii=False).encode()
          + b"\n" + b'{"id": "j2", "text": "caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e na\xc3\xafve \x81"}\n')
    docs, report = collect(tmp_path)
    assert not report.skipped
    text = docs["mostly.txt"].text
    assert text.count("\ufffd") == 3 and text.replace("\ufffd", "") == good.decode("utf-8")
    assert docs["mostly.txt"].metadata["encoding"] == "utf-8"
    assert docs["j2"].text == "café crème brûlée naïve \ufffd"
    warned = {(Path(w.path).name, w.line): w for w in report.warnings}
    assert set(warned) == {("mostly.txt", None), ("lines.jsonl", 2)}
    assert warned[("mostly.txt", None)].detail.startswith("3 byte(s)")
    assert warned[("lines.jsonl", 2)].detail.startswith("1 byte(s)")


@pytest.mark.parametrize("text,encoding", [
    (FRENCH + " « Œuvre » — “quotes”", "cp1252"),
    ("日本語のテキストには単語の区切りがありません。東京都渋谷区で会議を開催します。", "shift_jis"),
    ("Съешь же ещё этих мягких французских булок, да выпей чаю.", "cp1251"),
])
def test_legacy_encodings_still_detected(tmp_path: Path, text: str, encoding: str) -> None:
    write(tmp_path / "legacy.txt", text * 5, encoding=encoding)
    docs, report = collect(tmp_path)
    assert docs["legacy.txt"].text == text * 5
    assert not report.warnings and not report.skipped


def test_record_over_max_bytes_and_line_over_max_file_bytes(tmp_path: Path) -> None:
    write(tmp_path / "r.jsonl", "\n".join([json.dumps({"id": "big", "text": "y" * 3000}),
                                          json.dumps({"id": "huge", "text": "z" * 30_000}),
                                          json.dumps({"id": "ok", "text": "fine"})]) + "\n")
    docs, report = collect(tmp_path, max_bytes=2000, max_file_bytes=20_000)
    assert list(docs) == ["ok"]
    details = {s.line: (s.reason, s.detail) for s in report}
    assert details[1] == ("too large", "text is 3000 bytes, max_bytes is 2000")
    assert details[2][0] == "too large" and "max_file_bytes is 20000" in details[2][1]


def test_a_loop_of_links_and_an_index_folder_are_skipped_not_fatal(tmp_path: Path) -> None:
    """A loop of file links made the whole walk fail (``Path.resolve`` raises RuntimeError for
    it before Python 3.13); an index kept inside the corpus (``ingest docs --index docs/idx``)
    was read as documents (its manifest as a bad record, its live SQLite files)."""
    from hybridrag.index import HybridIndex

    root = tmp_path / "root"
    write(root / "ok.txt", "a good file")
    (root / "l2").symlink_to("l1")
    (root / "l1").symlink_to("l2")
    (root / "x.txt").symlink_to("l1")
    HybridIndex.create(root / "idx", {"name": "b", "encoder": {"kind": "none"}, "dense": {"enabled": False},
                                      "sparse": {"enabled": False}, "colbert": {"enabled": False},
                                      "bm25": {"enabled": True}, "fusion": {"weights": {"bm25": 1.0}}}).close()
    write(root / "idx" / "notes.txt", "a file someone put into the index folder")
    docs, report = collect(root)
    assert sorted(docs) == ["ok.txt"]
    assert reasons(report) == {"l1": "symlink loop", "l2": "symlink loop", "x.txt": "symlink loop",
                               "idx": "index directory"}


def test_record_fields_named_like_where_it_was_read_are_kept_renamed(tmp_path: Path) -> None:
    """A record's ``source`` (a common corpus field), ``format``, ``root``, ``position`` were
    silently overwritten by where it was read; a non-string title and a non-object
    ``metadata`` silently dropped. They are kept now, renamed with a warning where needed."""
    write(tmp_path / "recs.jsonl", "\n".join(json.dumps(r) for r in (
        {"id": "m1", "text": "one", "source": "wikipedia", "format": "article", "root": "/x", "position": 9},
        {"id": "m2", "text": "two", "metadata": {"source": "pubmed", "year": 2020}},
        {"id": "m3", "text": "three", "title": 5},
        {"id": "m4", "text": "four", "metadata": [1, 2]},
        {"id": "m5", "text": None})) + "\n")
    docs, report = collect(tmp_path)
    m1 = docs["m1"].metadata
    assert (m1["source"], m1["format"], m1["position"]) == ("recs.jsonl", "jsonl", 1)
    assert (m1["record_source"], m1["record_format"], m1["record_root"], m1["record_position"]) == \
        ("wikipedia", "article", "/x", 9)
    assert docs["m2"].metadata["record_source"] == "pubmed" and docs["m2"].metadata["year"] == 2020
    assert docs["m3"].metadata["title"] == 5 and docs["m3"].text == "three"
    assert docs["m4"].metadata["metadata"] == [1, 2]
    assert [str(s) for s in report] == [f"{tmp_path / 'recs.jsonl'}:5: bad record (text field 'text' is null; "
                                        "keys: ['id', 'text'])"]
    (warning,) = report.warnings
    assert warning.reason == "record fields renamed" and "'source' as 'record_source'" in warning.detail


def test_csv_quote_never_closed_is_reported_not_swallowed(tmp_path: Path) -> None:
    """An unclosed quote made the rest of the file one field of that row, silently (the rows
    after it lost); quirks the tolerant reader reads sensibly (``"b"c``) still pass."""
    write(tmp_path / "a.csv", 'id,text,year\n1,first,2020\n\n2,a "quoted" word,2021\n3,"b"c,2021\n'
                              '4,"unterminated,2022\n5,fifth row,2023\n')
    docs, report = collect(tmp_path)
    assert {k: d.text for k, d in docs.items()} == {"1": "first", "2": 'a "quoted" word', "3": "bc"}
    (skip,) = report
    assert (skip.reason, skip.line) == ("bad csv", 4) and "never closed" in skip.detail


def test_bad_json_says_where(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"id": "ok", "text": "fine"}\n{"id": "x", "text": "tab\there"}\n')
    write(tmp_path / "b.json", '[{"id": "y",\n "text": oops}]')
    _, report = collect(tmp_path)
    assert [str(s).split("/")[-1] for s in report] == [
        "a.jsonl:2: bad json (Invalid control character at column 25)",
        "b.json:2: bad json (Expecting value at line 2 column 10)"]
