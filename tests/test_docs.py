"""Documentation integrity: every relative link and doc path resolves, and the repository explains itself
(no tracked file points at a document that is not in the repository)."""

import re
import subprocess

import pytest

# Built from two halves so that this file does not contain the word it searches for.
OUTSIDE_DOC = re.compile(r"(?<![A-Za-z])" + "SP" + r"EC(?![A-Za-z])")  # the word, not ASPECT or SPECIAL
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_PATH = re.compile(r"(?<![\w./-])((?:\.\./)*docs/[A-Za-z0-9_./-]+\.md)(?:#([A-Za-z0-9_-]+))?")
SECTION_CITE = re.compile(r"(?<![\w/])(?:docs/)?([A-Za-z_]+\.md) § ([A-Za-z0-9][\w\-]*(?: [\w\-]+)*)")
TEXT_SUFFIXES = {".md", ".py", ".smk", ".yaml", ".yml", ".rst", ".toml", ".txt", ".cfg", ".sh", ".tsv", ".csv", ""}


def _tracked_files(repo_root):
    """Files git tracks or would track (not ignored), or every file outside .git / .venv / results / resources
    when the tree is not a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(repo_root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True)
        return [repo_root / p for p in out.stdout.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "results", "resources", ".snakemake", "logs"}
        return [p for p in repo_root.rglob("*") if p.is_file() and not skip & set(p.relative_to(repo_root).parts)]


def _text(path):
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None


def _markdown_files(repo_root):
    return [p for p in _tracked_files(repo_root) if p.suffix == ".md" and p.is_file()]


def github_slug(heading):
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md_path):
    """Anchors of the headings of a Markdown file (fenced code blocks skipped)."""
    anchors, fenced = set(), False
    for line in md_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(github_slug(line.lstrip("#")))
    return anchors


def test_github_slug_hand_examples():
    assert github_slug("Evaluation: wsolevaluation (MaxBoxAcc, MaxBoxAccV2, PxAP)") == \
        "evaluation-wsolevaluation-maxboxacc-maxboxaccv2-pxap"
    assert github_slug("Stage 1") == "stage-1"
    assert github_slug("The `genpromp` command line") == "the-genpromp-command-line"


def test_markdown_links_resolve(repo_root):
    broken = []
    files = _markdown_files(repo_root)
    assert any(p.name == "method.md" for p in files), "docs/method.md is missing"
    for md in files:
        fenced = False
        for n, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
            if fenced:
                continue
            for target in MD_LINK.findall(line):
                if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = (md.parent / path).resolve() if path else md
                where = f"{md.relative_to(repo_root)}:{n} -> {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_doc_paths_mentioned_anywhere_exist(repo_root):
    """Paths like docs/method.md (optionally #anchor or § Section) in code, configs and docs name real files."""
    missing = []
    for path in _tracked_files(repo_root):
        if path.suffix not in TEXT_SUFFIXES or (text := _text(path)) is None:
            continue
        if path.relative_to(repo_root).parts[0] == "tests":
            continue  # test data holds made-up paths on purpose
        for m in DOC_PATH.finditer(text):
            rel = m.group(1)
            base = repo_root if not rel.startswith("..") else path.parent
            dest = (base / rel).resolve()
            if not dest.is_file():
                missing.append(f"{path.relative_to(repo_root)}: {rel}")
            elif m.group(2) and m.group(2) not in _anchors(dest):
                missing.append(f"{path.relative_to(repo_root)}: {rel}#{m.group(2)} (no such heading)")
    assert not missing, "references to missing docs:\n" + "\n".join(missing)


def test_sections_cited_with_section_sign_exist(repo_root):
    """Citations like 'docs/method.md § Stage 1' or 'docs/FORMATS.md § CAM cache' name a heading of that doc."""
    bad, cited = [], 0
    for path in _tracked_files(repo_root):
        if path.suffix not in TEXT_SUFFIXES or (text := _text(path)) is None:
            continue
        for m in SECTION_CITE.finditer(text):
            doc = repo_root / "docs" / m.group(1)
            doc = doc if doc.is_file() else repo_root / m.group(1)  # README.md and other top-level docs
            cited += 1
            if not doc.is_file():
                bad.append(f"{path.relative_to(repo_root)}: {m.group(0)} (no docs/{m.group(1)} or {m.group(1)})")
                continue
            s, headings = github_slug(m.group(2)), _anchors(doc)
            if not any(s == h or s.startswith(h + "-") or h.startswith(s + "-") for h in headings):
                bad.append(f"{path.relative_to(repo_root)}: {m.group(0)}")
    assert cited > 0
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


def test_no_tracked_file_points_outside_the_repository(repo_root):
    offenders = []
    for path in _tracked_files(repo_root):
        text = _text(path) if path.is_file() else None
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_DOC.search(line):
                offenders.append(f"{path.relative_to(repo_root)}:{n}: {line.strip()[:100]}")
    assert not offenders, ("these lines cite a document that is not in the repository; point them at "
                           "docs/method.md instead:\n" + "\n".join(offenders))


@pytest.mark.parametrize("section", ["Prompts and tokens", "Stage 1", "Stage 2", "CAM extraction",
                                     "Inference precision", "Where genpromp deliberately differs"])
def test_method_doc_has_the_sections_code_refers_to(repo_root, section):
    text = (repo_root / "docs/method.md").read_text()
    assert re.search(rf"^## {re.escape(section)}$", text, re.M)
