"""The print faces kanjirec may use, as data: Debian package -> file -> face.

Only these packages are ever searched (`ALLOWED_PACKAGES`); every other font on the machine is
ignored unless a user names its file. Each row is one face, i.e. one synthetic "writer". Faces of
one design share a `family` (the unit that leave-styles-out holds out as a whole): weights of one
design, and fonts whose kanji were copied from another design (MigMix and Monapo take IPA Gothic's
kanji, IPAex follows IPA) belong to the same family, so holding a family out leaves no copy of it in
training. Packages on the allow-list that add no face of their own (fonts-ipamj-mincho) are not
used. See docs/FONTS.md for the choices and the licences.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOWED_PACKAGES: tuple[str, ...] = (
    "fonts-noto-cjk",
    "fonts-noto-cjk-extra",
    "fonts-ipafont",
    "fonts-ipaexfont",
    "fonts-ipamj-mincho",
    "fonts-hanazono",
    "fonts-sawarabi-gothic",
    "fonts-sawarabi-mincho",
    "fonts-motoya-l-cedar",
    "fonts-motoya-l-maruberi",
    "fonts-morisawa-bizud-gothic",
    "fonts-morisawa-bizud-mincho",
    "fonts-migmix",
    "fonts-horai-umefont",
    "fonts-konatu",
    "fonts-monapo",
    "fonts-dejima-mincho",
    "fonts-oradano-mincho-gsrr",
    "fonts-arphic-ukai",
    "fonts-arphic-uming",
    "fonts-cwtex-kai",
    "fonts-cns11643-kai",
)


@dataclass(frozen=True)
class FaceSpec:
    package: str  # the Debian package that ships the file
    file: str  # file name, searched for under the font folders
    face: str  # family name in the file's name table (picks the face of a .ttc collection)
    style: str  # style name in the file's name table
    family: str  # design family: the leave-styles-out unit
    # Chinese faces: the Noto CJK regions (SC, TC, HK) whose glyph must be the JP glyph for the face to
    # draw a character (see fonts.chinese_form_agreement), and the codecs of the character sets its
    # designers drew to that standard (a glyph outside them is an extension of no fixed form: cwTeX Kai
    # draws 円 like 冄). Both empty for Japanese faces.
    forms: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()
    default: bool = False  # one of the print faces used when nothing else is asked for


_NS, _NSX = "fonts-noto-cjk", "fonts-noto-cjk-extra"
_UME = "fonts-horai-umefont"
# ukai and uming are Arphic's Big5 designs extended with GB glyphs: their CN/HK/TW faces differ in two
# JIS level-1 characters only (令 骨), so their standard is mixed and a character must agree with all.
_ALL_REGIONS = ("SC", "TC", "HK")
_MIXED = (_ALL_REGIONS, ("big5", "gb2312"))

FACES: tuple[FaceSpec, ...] = (
    # Noto Sans / Serif CJK (Source Han): the JP face of each weight's collection.
    FaceSpec(_NSX, "NotoSansCJK-Thin.ttc", "Noto Sans CJK JP Thin", "Regular", "Noto Sans CJK"),
    FaceSpec(_NSX, "NotoSansCJK-Light.ttc", "Noto Sans CJK JP Light", "Regular", "Noto Sans CJK"),
    FaceSpec(_NSX, "NotoSansCJK-DemiLight.ttc", "Noto Sans CJK JP DemiLight", "Regular", "Noto Sans CJK"),
    FaceSpec(_NS, "NotoSansCJK-Regular.ttc", "Noto Sans CJK JP", "Regular", "Noto Sans CJK", default=True),
    FaceSpec(_NSX, "NotoSansCJK-Medium.ttc", "Noto Sans CJK JP Medium", "Regular", "Noto Sans CJK"),
    FaceSpec(_NS, "NotoSansCJK-Bold.ttc", "Noto Sans CJK JP", "Bold", "Noto Sans CJK", default=True),
    FaceSpec(_NSX, "NotoSansCJK-Black.ttc", "Noto Sans CJK JP Black", "Regular", "Noto Sans CJK"),
    FaceSpec(
        _NSX, "NotoSerifCJK-ExtraLight.ttc", "Noto Serif CJK JP ExtraLight", "Regular", "Noto Serif CJK"
    ),
    FaceSpec(_NSX, "NotoSerifCJK-Light.ttc", "Noto Serif CJK JP Light", "Regular", "Noto Serif CJK"),
    FaceSpec(_NS, "NotoSerifCJK-Regular.ttc", "Noto Serif CJK JP", "Regular", "Noto Serif CJK", default=True),
    FaceSpec(_NSX, "NotoSerifCJK-Medium.ttc", "Noto Serif CJK JP Medium", "Regular", "Noto Serif CJK"),
    FaceSpec(_NSX, "NotoSerifCJK-SemiBold.ttc", "Noto Serif CJK JP SemiBold", "Regular", "Noto Serif CJK"),
    FaceSpec(_NS, "NotoSerifCJK-Bold.ttc", "Noto Serif CJK JP", "Bold", "Noto Serif CJK", default=True),
    FaceSpec(_NSX, "NotoSerifCJK-Black.ttc", "Noto Serif CJK JP Black", "Regular", "Noto Serif CJK"),
    # IPA and its descendants. The proportional variants (IPAPGothic, BIZ UDPGothic, MigMix 1P ...) draw
    # the same glyphs with other advances, which a single centred character does not show: left out.
    # So are faces whose kanji repeat another face's (a duplicate writer adds nothing and lets one
    # design sit on both sides of a writer-disjoint split): IPAmj Mincho (IPA Mincho's kanji, 25 MB),
    # Migu 1C (MigMix 1M's kanji), Ume Gothic C5 (Ume Gothic O5's).
    FaceSpec("fonts-ipafont", "ipag.ttf", "IPAGothic", "Regular", "IPA Gothic", default=True),
    FaceSpec("fonts-ipafont", "ipam.ttf", "IPAMincho", "Regular", "IPA Mincho", default=True),
    FaceSpec("fonts-ipaexfont", "ipaexg.ttf", "IPAexGothic", "Regular", "IPA Gothic", default=True),
    FaceSpec("fonts-ipaexfont", "ipaexm.ttf", "IPAexMincho", "Regular", "IPA Mincho", default=True),
    FaceSpec("fonts-migmix", "migmix-1m-regular.ttf", "MigMix 1M", "Regular", "IPA Gothic"),
    FaceSpec("fonts-migmix", "migmix-1m-bold.ttf", "MigMix 1M", "Bold", "IPA Gothic"),
    FaceSpec("fonts-monapo", "monapo.ttf", "Monapo", "Regular", "IPA Gothic"),
    # GlyphWiki descendants.
    FaceSpec("fonts-hanazono", "HanaMinA.ttf", "HanaMinA", "Regular", "Hanazono Mincho"),
    FaceSpec(_UME, "ume-tgo4.ttf", "Ume Gothic", "Regular", "Ume Gothic"),
    FaceSpec(_UME, "ume-tgo5.ttf", "Ume Gothic O5", "Medium", "Ume Gothic"),
    FaceSpec(_UME, "ume-tgs4.ttf", "Ume Gothic S4", "Regular", "Ume Gothic"),
    FaceSpec(_UME, "ume-tmo3.ttf", "Ume Mincho", "Regular", "Ume Mincho"),
    FaceSpec(_UME, "ume-tms3.ttf", "Ume Mincho S3", "Regular", "Ume Mincho"),
    # Independent Japanese designs.
    FaceSpec(
        "fonts-sawarabi-gothic", "sawarabi-gothic-medium.ttf", "Sawarabi Gothic", "Medium", "Sawarabi Gothic"
    ),
    FaceSpec(
        "fonts-sawarabi-mincho", "sawarabi-mincho-medium.ttf", "Sawarabi Mincho", "Medium", "Sawarabi Mincho"
    ),
    FaceSpec("fonts-motoya-l-cedar", "MTLc3m.ttf", "MotoyaLCedar", "W3 mono", "Motoya L Cedar"),
    FaceSpec("fonts-motoya-l-maruberi", "MTLmr3m.ttf", "MotoyaLMaru", "W3 mono", "Motoya L Maruberi"),
    FaceSpec(
        "fonts-morisawa-bizud-gothic", "BIZUDGothic-Regular.ttf", "BIZ UDGothic", "Regular", "BIZ UD Gothic"
    ),
    FaceSpec("fonts-morisawa-bizud-gothic", "BIZUDGothic-Bold.ttf", "BIZ UDGothic", "Bold", "BIZ UD Gothic"),
    FaceSpec(
        "fonts-morisawa-bizud-mincho", "BIZUDMincho-Regular.ttf", "BIZ UDMincho", "Regular", "BIZ UD Mincho"
    ),
    FaceSpec("fonts-konatu", "Konatu.ttf", "Konatu", "Regular", "Konatu"),
    FaceSpec("fonts-dejima-mincho", "dejima-mincho-r227.ttf", "Dejima", "mincho", "Dejima Mincho"),
    FaceSpec(
        "fonts-oradano-mincho-gsrr", "OradanoGSRR.ttf", "Oradano-mincho-GSRR", "mincho-GSRR", "Oradano Mincho"
    ),
    # Chinese faces: per-character form agreement decides what they draw.
    FaceSpec("fonts-arphic-ukai", "ukai.ttc", "AR PL UKai TW MBE", "Book", "AR PL UKai", *_MIXED),
    FaceSpec("fonts-arphic-uming", "uming.ttc", "AR PL UMing TW MBE", "Light", "AR PL UMing", *_MIXED),
    FaceSpec("fonts-cwtex-kai", "cwkai.ttf", "cwTeXKai", "Medium", "cwTeX Kai", _ALL_REGIONS, ("big5",)),
    # The Taiwanese government's font, drawn to the Ministry of Education's standard forms.
    FaceSpec("fonts-cns11643-kai", "TW-Kai-98_1.ttf", "TW-Kai", "Regular", "TW-Kai", ("TC",), ("big5",)),
)
