"""Chunking: sizes, overlap, page attribution, sentence-friendly and CJK-friendly splits."""

import pytest

from app.rag.chunking import Chunk, chunk_sections
from app.rag.extract import Section

PROSE = " ".join(
    f"Sentence number {n} talks about the harbour, the boats and the weather." for n in range(40)
)
CJK = "".join(f"第{n}句话讲的是港口里的船和天气。" for n in range(60))


def words(text: str) -> int:
    return len(text.split())


def test_indexes_are_consecutive_across_sections_and_pages_are_kept() -> None:
    sections = [Section(PROSE, 1), Section(PROSE, 2), Section("Short last page.", 5)]
    chunks = chunk_sections(sections, chunk_size=200, chunk_overlap=20)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    pages = [chunk.page or 0 for chunk in chunks]
    assert pages == sorted(pages) and set(pages) == {1, 2, 5}
    assert chunks[-1] == Chunk(text="Short last page.", index=len(chunks) - 1, page=5)


def test_chunks_never_mix_pages() -> None:
    sections = [Section("Alpha " * 30, 1), Section("Omega " * 30, 2)]
    for chunk in chunk_sections(sections, chunk_size=50, chunk_overlap=10):
        expected = "Alpha" if chunk.page == 1 else "Omega"
        assert set(chunk.text.split()) == {expected}


def test_chunk_size_is_respected_and_text_is_covered() -> None:
    chunks = chunk_sections([Section(PROSE, None)], chunk_size=150, chunk_overlap=0)
    assert len(chunks) > 5
    assert all(len(chunk.text) <= 150 for chunk in chunks)
    assert " ".join(chunk.text for chunk in chunks) == PROSE


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    # Overlap is made of whole split units: here one 70-character sentence fits in 80.
    chunks = chunk_sections([Section(PROSE, None)], chunk_size=200, chunk_overlap=80)
    assert len(chunks) > 5
    for previous, current in zip(chunks, chunks[1:], strict=False):
        first_words = " ".join(current.text.split()[:3])
        assert first_words in previous.text


def test_no_overlap_means_no_repetition() -> None:
    chunks = chunk_sections([Section(PROSE, None)], chunk_size=160, chunk_overlap=0)
    assert sum(len(chunk.text) for chunk in chunks) <= len(PROSE)


def test_sentences_keep_their_full_stop() -> None:
    text = "First sentence is here. Second sentence follows it. Third one ends the text."
    chunks = chunk_sections([Section(text, None)], chunk_size=30, chunk_overlap=0)
    assert [chunk.text for chunk in chunks] == [
        "First sentence is here.",
        "Second sentence follows it.",
        "Third one ends the text.",
    ]


def test_paragraphs_are_preferred_split_points() -> None:
    first = "A short first paragraph about ships."
    second = "A second paragraph about the weather at sea."
    chunks = chunk_sections([Section(f"{first}\n\n{second}", 3)], chunk_size=60, chunk_overlap=0)
    assert [chunk.text for chunk in chunks] == [first, second]


def test_cjk_text_splits_at_ideographic_full_stops() -> None:
    chunks = chunk_sections([Section(CJK, 1)], chunk_size=50, chunk_overlap=0)
    assert len(chunks) > 5
    assert all(len(chunk.text) <= 50 for chunk in chunks)
    assert all(chunk.text.endswith("。") for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == CJK


def test_length_function_sets_the_unit() -> None:
    chunks = chunk_sections(
        [Section(PROSE, None)], chunk_size=25, chunk_overlap=5, length_function=words
    )
    assert all(words(chunk.text) <= 25 for chunk in chunks)
    assert any(len(chunk.text) > 100 for chunk in chunks)  # not counting characters


def test_unbreakable_text_is_cut_by_characters() -> None:
    chunks = chunk_sections([Section("x" * 250, None)], chunk_size=100, chunk_overlap=0)
    assert [len(chunk.text) for chunk in chunks] == [100, 100, 50]


def test_whitespace_is_stripped_and_blank_sections_dropped() -> None:
    sections = [Section("   \n\n  ", 1), Section("\n  Real text.  \n", 2), Section("\t", 3)]
    assert chunk_sections(sections, chunk_size=100, chunk_overlap=10) == [
        Chunk(text="Real text.", index=0, page=2)
    ]


def test_no_sections_no_chunks() -> None:
    assert chunk_sections([], chunk_size=100, chunk_overlap=10) == []


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 100), (100, 150), (100, -1)])
def test_invalid_sizes_are_rejected(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_sections([Section(PROSE, None)], chunk_size=size, chunk_overlap=overlap)


def test_structure_keeps_each_paragraph_apart_and_merges_only_short_blocks() -> None:
    first = "The harbour opens at six and closes at ten in the evening every day."
    second = "Boats longer than twelve metres must book a berth two days ahead."
    text = f"{first}\n\n{second}\n\nShort.\n\nTiny.\n\n{first}"
    chunks = chunk_sections(
        [Section(text, None)], chunk_size=100, chunk_overlap=10, length_function=words, min_size=8
    )
    # Paragraphs long enough stand alone; the two short ones join the paragraph after them.
    assert [c.text for c in chunks] == [first, second, f"Short.\n\nTiny.\n\n{first}"]
    recursive = chunk_sections(
        [Section(text, None)],
        chunk_size=100,
        chunk_overlap=10,
        length_function=words,
        strategy="recursive",
    )
    assert len(recursive) == 1  # packed: everything fits in one chunk


def test_structure_puts_the_heading_path_in_front_and_never_merges_across_headings() -> None:
    sections = [
        Section("Money back within 14 days.", None, ("Returns", "Refunds")),
        Section("Send it with the label.", None, ("Returns", "Shipping")),
        Section("Page two text.", 2),
    ]
    chunks = chunk_sections(
        sections, chunk_size=100, chunk_overlap=0, length_function=words, min_size=50
    )
    assert [(c.text, c.heading, c.page) for c in chunks] == [
        ("Returns > Refunds\n\nMoney back within 14 days.", "Returns > Refunds", None),
        ("Returns > Shipping\n\nSend it with the label.", "Returns > Shipping", None),
        ("Page two text.", "", 2),
    ]
    plain = chunk_sections(sections, chunk_size=100, chunk_overlap=0, strategy="recursive")
    assert [c.heading for c in plain] == ["", "", ""]
    assert plain[0].text == "Money back within 14 days."


def test_a_long_block_is_split_within_the_window_left_by_its_heading() -> None:
    heading = ("Chapter one about the harbour",)  # 5 words
    chunks = chunk_sections(
        [Section(PROSE, None, heading)], chunk_size=60, chunk_overlap=0, length_function=words
    )
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.startswith("Chapter one about the harbour\n\n")
        assert words(chunk.text) <= 60
    body = " ".join(c.text.split("\n\n", 1)[1] for c in chunks)
    assert body == PROSE


def test_a_heading_longer_than_half_the_window_is_cut() -> None:
    heading = (" ".join(["word"] * 80),)
    (chunk,) = chunk_sections(
        [Section("Body text.", None, heading)],
        chunk_size=40,
        chunk_overlap=0,
        length_function=words,
    )
    assert chunk.heading.endswith(" …") and words(chunk.heading) <= 20
    assert chunk.text == f"{chunk.heading}\n\nBody text."


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        chunk_sections([Section("x", None)], chunk_size=10, chunk_overlap=0, strategy="words")
