"""kanjirec: recognise handwritten Japanese characters (kanji and kana)."""

__version__ = "0.1.0"
