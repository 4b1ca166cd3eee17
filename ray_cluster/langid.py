"""Language identification: Unicode script first, then lingua within the script, then documented rules.

Every answer is `<ISO 639-3>_<ISO 15924>` (`deu_Latn`, `srp_Cyrl`, `cmn_Hans`) with a score in [0, 1].
Decision order for one text (the rules are linguistic facts, listed here so a reader can audit them):

1. No letters (empty, digits, punctuation, emoji) -> `und_Zyyy`, score 0.
2. Dominant script = the script with the most letters (code point ranges below, no extra dependency).
3. Scripts that one language owns decide it directly (Thaana->div, Georgian->kat, ...), score = share of
   letters in that script. Some are heuristics: Bengali script also writes Assamese, Ethiopic Tigrinya,
   Myanmar Shan/Karen, Tibetan Dzongkha; those get a lower score (x0.9). Hebrew with the Yiddish
   digraph letters (U+05F0-05F2) -> ydd.
4. Han/Kana/Hangul: Hangul >= 10% of the CJK letters -> kor_Hang; kana >= 10% of the CJK letters -> jpn_Jpan; Han-only text
   with Japanese-only shinjitai forms (権, 気, 広, ...) -> jpn_Jpan; otherwise Chinese, and the variant is
   decided by counting simplified-only vs traditional-only characters (two small tables of common
   pairs, e.g. 们/們, 这/這, 国/國): more simplified -> cmn_Hans, more traditional -> cmn_Hant, tie -> cmn_Hani.
5. Letters only some languages outside lingua's set use (checked before lingua, which cannot answer them):
   Uyghur vowel letters (ە with one of ۇ ۆ ۈ ې; none are Arabic/Persian/Urdu letters) -> uig;
   Uzbek Latin oʻ/gʻ (U+02BB or U+2018 after o/g) -> uzn; Hausa hooked ƙ/ɓ/ɗ/ƴ (ɓ/ɗ only without Fula's ŋ)
   -> hau; Igbo ị/ụ without Vietnamese letters (ă â đ ê ô ơ ư) -> ibo; Nepali copula छ/छन्/छैन,
   future -नेछ or plural -हरू in Devanagari -> npi. Each needs one such mark per 300 letters.
6. Latin/Cyrillic/Arabic/Devanagari, fast path: CLD2 (pycld2, Chrome's detector). An answer it marks
   reliable decides the language (the script still comes from step 2), mapped to the corpus's codes
   (CLD2_CODES, legacy codes included: iw, jw, zh, zh-Hant, no, ms, ...), when that language is written
   in the text's script (a Cyrillic text never becomes `eng_Cyrl`). Within close groups CLD2 mixes up:
   - Serbian/Macedonian/Bulgarian in Cyrillic: the alphabets decide: ѓ ќ ѕ only in Macedonian, ђ ћ only
     in Serbian, ъ щ only in Bulgarian (and Bulgarian has none of ј љ њ џ); with no deciding letter,
     lingua decides among the three alone (a small, fast detector; lingua separates them well);
   - Bosnian/Croatian/Serbian in Latin script: CLD2's `bs` (its answer for most Serbian Latin text)
     -> `und_Latn`; `hr` and `sr` are kept with half the score;
   - Indonesian/Malay: kept with half the score (a best guess between two standards).
   An answer CLD2 marks unreliable is kept, with half the score, when CLD2 puts at least half of the
   text in that language (UNRELIABLE_MIN_SHARE); texts CLD2 refuses (code points it cannot take) or
   cannot place (mostly short texts) go to step 7.
7. Slow path, for what step 6 left (about 1% of UDHR paragraphs): lingua built from its languages of
   the four scripts, built on first use. Its answer becomes `und_<Script>` when
   - the text has fewer than 5 distinct letters ("kkkk", "hahaha": lingua would still name a language);
   - the top confidence is below MIN_CONF (the text is probably in a language lingua does not know), or
     below SHORT_MIN_CONF for texts with fewer than SHORT_LETTERS letters;
   - the top two are in one group of mutually intelligible standard varieties (GROUPS: Danish/Norwegian,
     Zulu/Xhosa, Sotho/Tswana, Czech/Slovak, Bulgarian/Macedonian) and the margin between them is below
     GROUP_MARGIN;
   - the answer is Bosnian, Croatian or Serbian in Latin script: lingua's Serbian model is Cyrillic-only,
     so it calls Serbian Latin text Bosnian or Croatian, often with confidence ~1 (UDHR corpus);
   - the answer is Malay or Indonesian: lingua's Malay model claims a large part of Indonesian text with
     confidence up to 1 (UDHR corpus: 21 of 52 Indonesian paragraphs), so neither answer can be trusted.
   Both `NEVER` rules were chosen after seeing the UDHR benchmark.
8. Any other script -> `und_<Script>`, score 0.

`lang_score`: share of letters in the script (steps 3-5, x0.9 for shared scripts and rules); CLD2's
share of the text it attributes to the language, 0-1 (step 6, halved inside close groups and for
answers CLD2 marks unreliable); lingua's
confidence (step 7); 0 for `und_*`.

lingua's codes are mapped to the corpus's (msa->zlm, ara->arb, fas->pes, aze->azj, sqi->als, mon->khk,
swa->swh, zho->cmn). `und_*` answers always have score 0.
`LanguageIdentifier(fast=False)` skips step 6 (lingua for everything, the detector before CLD2).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, version

from xlmflow.ray_cluster.scripts import MAX_SCRIPT_CHARS, analyse, batch_counts, cjk_language

MIN_CONF = 0.35  # lingua confidence below this: probably a language lingua does not know
SHORT_LETTERS = 20  # fewer letters than this is a "short" text (titles, fragments)
SHORT_MIN_CONF = 0.6
GROUP_MARGIN = 0.1  # top-vs-runner-up margin needed inside a group of close varieties
MAX_LINGUA_CHARS = 2000  # lingua's accuracy saturates long before; keeps one huge doc cheap

# Scripts one language owns -> that language. Values in _SHARED_SCRIPT also write other languages.
SCRIPT_LANG = {
    "Thaa": "div", "Sinh": "sin", "Laoo": "lao", "Khmr": "khm", "Mymr": "mya", "Tibt": "bod",
    "Geor": "kat", "Armn": "hye", "Grek": "ell", "Hebr": "heb", "Ethi": "amh", "Thai": "tha",
    "Gujr": "guj", "Guru": "pan", "Taml": "tam", "Telu": "tel", "Knda": "kan", "Mlym": "mal",
    "Beng": "ben", "Orya": "ory",
}  # fmt: skip
_SHARED_SCRIPT = {"Beng", "Ethi", "Mymr", "Tibt"}  # Assamese, Tigrinya, Shan/Karen, Dzongkha
LINGUA_SCRIPTS = ("Latn", "Cyrl", "Arab", "Deva")

# lingua ISO 639-3 -> the code the corpus (and FLORES-style data) uses for the same language.
CODE_MAP = {"msa": "zlm", "ara": "arb", "fas": "pes", "aze": "azj", "sqi": "als", "mon": "khk",
            "swa": "swh", "zho": "cmn"}  # fmt: skip
# CLD2 code -> the corpus's ISO 639-3 code. Legacy and macrolanguage codes are mapped on purpose:
# iw (Hebrew), jw (Javanese), zh/zh-Hant (Mandarin; the script decides Hans/Hant), no (Bokmål),
# ms (Standard Malay), fa (Iranian Persian), ar (Standard Arabic), sq (Tosk Albanian), az (North
# Azerbaijani), uz (Northern Uzbek), mn (Halh Mongolian), sw (Swahili), et (Estonian), lv (Latvian).
CLD2_CODES = {
    "af": "afr", "ar": "arb", "az": "azj", "be": "bel", "bg": "bul", "bs": "bos", "ca": "cat", "ceb": "ceb",
    "cs": "ces", "cy": "cym", "da": "dan", "de": "deu", "el": "ell", "en": "eng", "eo": "epo", "es": "spa",
    "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "fy": "fry", "ga": "gle", "gd": "gla",
    "gl": "glg", "ha": "hau", "hi": "hin", "hr": "hrv", "ht": "hat", "hu": "hun", "id": "ind", "ig": "ibo",
    "is": "isl", "it": "ita", "iw": "heb", "he": "heb", "ja": "jpn", "jw": "jav", "jv": "jav", "kk": "kaz",
    "ko": "kor", "ku": "kmr", "ky": "kir", "la": "lat", "lb": "ltz", "lt": "lit", "lv": "lav", "mg": "mlg",
    "mi": "mri", "mk": "mkd", "mn": "khk", "mr": "mar", "ms": "zlm", "mt": "mlt", "ne": "npi", "nl": "nld",
    "nn": "nno", "no": "nob", "ny": "nya", "pl": "pol", "ps": "pbt", "pt": "por", "ro": "ron", "ru": "rus",
    "rw": "kin", "sd": "snd", "sk": "slk", "sl": "slv", "sm": "smo", "sn": "sna", "so": "som", "sq": "als",
    "sr": "srp", "st": "sot", "su": "sun", "sv": "swe", "sw": "swh", "tg": "tgk", "tl": "tgl", "tn": "tsn",
    "tr": "tur", "tt": "tat", "ug": "uig", "uk": "ukr", "ur": "urd", "uz": "uzn", "vi": "vie", "xh": "xho",
    "yi": "ydd", "yo": "yor", "zh": "cmn", "zh-Hant": "cmn", "zu": "zul",
}  # fmt: skip
# Scripts a language is written in, where not Latin only (for the four scripts CLD2 decides).
LANG_SCRIPTS = {
    "rus": {"Cyrl"}, "ukr": {"Cyrl"}, "bel": {"Cyrl"}, "bul": {"Cyrl"}, "mkd": {"Cyrl"}, "kir": {"Cyrl"},
    "tgk": {"Cyrl"}, "khk": {"Cyrl"}, "srp": {"Cyrl", "Latn"}, "kaz": {"Cyrl", "Latn"},
    "uzn": {"Latn", "Cyrl"}, "azj": {"Latn", "Cyrl"}, "tat": {"Cyrl", "Latn"}, "kmr": {"Latn", "Arab"},
    "arb": {"Arab"}, "pes": {"Arab"}, "urd": {"Arab"}, "uig": {"Arab"}, "pbt": {"Arab"}, "snd": {"Arab"},
    "hin": {"Deva"}, "mar": {"Deva"}, "npi": {"Deva"},
    "heb": {"Hebr"}, "ydd": {"Hebr"}, "ell": {"Grek"}, "jpn": {"Jpan"}, "kor": {"Hang"},
    "cmn": {"Hans", "Hant", "Hani"},
}  # fmt: skip
CLOSE_HALF = {"Latn": {"hrv", "srp", "ind", "zlm"}}  # kept, with half the score
CLOSE_UND = {"Latn": {"bos"}}  # CLD2's Bosnian is mostly Serbian Latin text
_MKD_ONLY, _SRP_ONLY, _BUL_ONLY = re.compile("[ѓќѕЃЌЅ]"), re.compile("[ђћЂЋ]"), re.compile("[ъщЪЩ]")
_SRP_MKD = re.compile("[јљњџЈЉЊЏ]")
# Mutually intelligible standard varieties lingua is known to mix up (lingua codes).
GROUPS = [{"dan", "nob", "nno"}, {"zul", "xho"}, {"sot", "tsn"}, {"ces", "slk"}, {"bul", "mkd"}]
# lingua answers never emitted for a script, because lingua cannot separate the group there (step 6).
NEVER = {"Latn": {"bos", "hrv", "srp", "ind", "msa"}}

_UZN = re.compile("[OoGg][\u02bb\u2018]")
_HAU_K = re.compile("[\u0198\u0199]")  # ƙ
_HAU_BD = re.compile("[\u0181\u0253\u018a\u0257\u01b3\u01b4]")  # ɓ ɗ ƴ (also Fula, which adds ŋ)
_IBO = re.compile("[\u1eca\u1ecb\u1ee4\u1ee5]")  # ị ụ (also Vietnamese tone marks)
_VIE = re.compile("[ăâđêôơưĂÂĐÊÔƠƯ]")
_UIG_V = re.compile("[\u06c6\u06c7\u06c8\u06d0]")  # ۆ ۇ ۈ ې
_NPI = re.compile(r"(?:^|[\s,;])(?:छ|छन्|छैन|छैनन्)(?=[\s।,.;]|$)|\Sनेछ|हरू|हरु")
_YDD = re.compile("[\u05f0-\u05f2]")
_LATN_MARKS = re.compile(
    "[\u02bb\u2018\u0198\u0199\u0181\u0253\u018a\u0257\u01b3\u01b4\u1eca\u1ecb\u1ee4\u1ee5]"
)


def _rule_lang(script: str, text: str, letters: int) -> str | None:
    """Languages decided by letters only they use (module docstring, step 5).

    The marks must be frequent enough (one per 300 letters) that a quoted name cannot flip a document."""
    need = max(1, letters // 300)
    if script == "Arab":
        if text.count("\u06d5") >= need and len(_UIG_V.findall(text)) >= need:
            return "uig"
    elif script == "Latn":
        if not _LATN_MARKS.search(text):  # most Latin text: none of the marks below, one cheap pass
            return None
        if len(_UZN.findall(text)) >= need:
            return "uzn"
        hooks = len(_HAU_K.findall(text)) or (0 if "ŋ" in text or "Ŋ" in text else len(_HAU_BD.findall(text)))
        if hooks >= need:
            return "hau"
        if len(_IBO.findall(text)) >= need and not _VIE.search(text):
            return "ibo"
    elif script == "Deva":
        if len(_NPI.findall(text)) >= need:
            return "npi"
    return None


@cache
def _code(language: object) -> str:
    return language.iso_code_639_3.name.lower()  # type: ignore[attr-defined]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


@lru_cache(maxsize=1)
def _lingua_version() -> str:
    return _version("lingua-language-detector")


@lru_cache(maxsize=1)
def detector_version() -> str:
    """What decides the `lang` labels; part of the run's config hash (new labels need --force)."""
    return f"cld2-{_version('pycld2')}+lingua-{_lingua_version()}+rules-3"


def cld2_lang(code: str, script: str) -> str | None:
    """The corpus's ISO 639-3 code for a CLD2 answer on text in `script`; None when CLD2's language
    is not written in that script or has no mapping (the text then goes to the slow path)."""
    lang = CLD2_CODES.get(code)
    if lang is None or script not in LANG_SCRIPTS.get(lang, {"Latn"}):
        return None
    return lang


def south_slavic_cyrl(text: str) -> str | None:
    """bul/mkd/srp for Cyrillic text by letters only one of the three alphabets has; None if none does."""
    mkd, srp, bul = bool(_MKD_ONLY.search(text)), bool(_SRP_ONLY.search(text)), bool(_BUL_ONLY.search(text))
    if mkd + srp + bul != 1:
        return None
    if bul:
        return None if _SRP_MKD.search(text) else "bul"
    return "mkd" if mkd else "srp"


SOUTH_SLAVIC = ("bul", "mkd", "srp")
UNRELIABLE_MIN_SHARE = 0.5
# control characters CLD2 refuses as "invalid UTF-8"; as spaces they change no language
_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _few_letters(text: str) -> bool:
    """Fewer than 5 distinct letters in the first 200 characters ("kkkkk", "hahaha")."""
    chars = set(text[:200].casefold())
    return len(chars) < 5 or sum(map(str.isalpha, chars)) < 5


def _cld2(text: str, script: str) -> tuple[str, float] | tuple[str, ...] | None:
    """Step 6: CLD2's answer; None for the slow path (refused bytes, unreliable, unmapped), or
    SOUTH_SLAVIC for Cyrillic text that lingua should decide among those three only."""
    # lazy: only language identification needs it
    import pycld2

    if _CTRL.search(text):
        text = _CTRL.sub(" ", text)
    try:
        reliable, _, details = pycld2.detect(text, isPlainText=True)
    except pycld2.error:
        return None  # it still refuses some code points (noncharacters such as U+FFFE): slow path
    code, percent = details[0][1], details[0][2] / 100
    if not reliable:
        # unreliable but most of the text in one known language (tuned on half the UDHR units): keep it
        # at half the score; the rest (mostly "unknown" on short texts) goes to the slow path
        if code == "un" or percent < UNRELIABLE_MIN_SHARE:
            return None
        percent /= 2
    lang = cld2_lang(code, script)
    if lang is None:
        return None
    if script == "Cyrl" and lang in SOUTH_SLAVIC:
        lang = south_slavic_cyrl(text)
        return (f"{lang}_Cyrl", percent) if lang else SOUTH_SLAVIC  # no deciding letter: lingua's 3
    if lang in CLOSE_UND.get(script, ()):
        return f"und_{script}", 0.0
    if lang in CLOSE_HALF.get(script, ()):
        return f"{lang}_{script}", percent / 2
    return f"{lang}_{script}", percent


class LanguageIdentifier:
    """Build once, then call `detect` on batches. `decided` counts which step answered each text.

    `fast=False`: lingua for all of Latin/Cyrillic/Arabic/Devanagari (the detector before CLD2).
    `preload`: load lingua's models now (seconds) instead of on the first text that needs them.
    """

    def __init__(self, preload: bool = False, fast: bool = True) -> None:
        self.fast, self._preload = fast, preload
        self._detector = None
        self._slavic = None
        self.decided: collections.Counter[str] = collections.Counter()
        if preload or not fast:
            self._lingua()

    def _lingua(self):  # noqa: ANN202
        if self._detector is None:
            # lazy: lingua loads its language models; only language identification needs it
            from lingua import Language, LanguageDetectorBuilder

            # One detector for the four scripts: lingua itself drops languages whose alphabet does not
            # match the text, and one build loads the models once (four builds took 2x longer here).
            by_script = {
                "Latn": Language.all_with_latin_script(),
                "Cyrl": Language.all_with_cyrillic_script(),
                "Arab": Language.all_with_arabic_script(),
                "Deva": Language.all_with_devanagari_script(),
            }
            # a mixed-script text must not get a language of another script (e.g. rus_Latn)
            self._codes = {script: {_code(lang) for lang in langs} for script, langs in by_script.items()}
            builder = LanguageDetectorBuilder.from_languages(*set().union(*by_script.values()))
            self._detector = (builder.with_preloaded_language_models() if self._preload else builder).build()
        return self._detector

    def info(self) -> dict:
        detectors = {
            "fallback": {
                "name": "lingua",
                "package": "lingua-language-detector",
                "version": _lingua_version(),
            }
        }
        if self.fast:
            detectors["fast"] = {"name": "cld2", "package": "pycld2", "version": _version("pycld2")}
        return {"detectors": detectors, "detector_version": detector_version(), "rules": "ray_cluster.langid",
                "min_conf": MIN_CONF, "group_margin": GROUP_MARGIN}  # fmt: skip

    def detect(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(lang code, score) per text; never raises on odd input (None/non-str count as empty)."""
        out: list[tuple[str, float] | None] = [None] * len(texts)
        todo: dict[str, list[tuple[int, str, int]]] = {}
        slavic: list[tuple[int, str, int]] = []
        decided = self.decided
        # lone surrogates (from bad decoding) would make lingua's Rust side raise
        clean = [
            (t if isinstance(t, str) else "").encode("utf-8", errors="replace").decode("utf-8") for t in texts
        ]
        for i, (text, letters) in enumerate(zip(clean, batch_counts(clean), strict=True)):
            script, n, share, counts = analyse(text, letters)
            if not n:
                out[i], how = ("und_Zyyy", 0.0), "no_letters"
            elif script in ("Hang", "Jpan", "Hans", "Hant", "Hani"):
                out[i], how = (f"{cjk_language(counts, text)[0]}_{script}", share), "script"
            elif script in SCRIPT_LANG:
                lang = "ydd" if script == "Hebr" and _YDD.search(text) else SCRIPT_LANG[script]
                out[i], how = (
                    (f"{lang}_{script}", share * (0.9 if script in _SHARED_SCRIPT else 1.0)),
                    "script",
                )
            elif (lang := _rule_lang(script, text[:MAX_SCRIPT_CHARS], n)) is not None:
                out[i], how = (f"{lang}_{script}", 0.9 * share), "rule"
            elif script in LINGUA_SCRIPTS and _few_letters(text):
                out[i], how = (f"und_{script}", 0.0), "few_letters"  # "kkkkk", "hahaha": not language
            elif script in LINGUA_SCRIPTS and self.fast and (hit := _cld2(text[:MAX_SCRIPT_CHARS], script)):
                if hit is SOUTH_SLAVIC:
                    slavic.append((i, text[:MAX_LINGUA_CHARS], n))
                    how = "lingua_south_slavic"
                else:
                    out[i], how = hit, "cld2"
            elif script in LINGUA_SCRIPTS:
                todo.setdefault(script, []).append((i, text[:MAX_LINGUA_CHARS], n))
                how = "lingua"
            else:
                out[i], how = (f"und_{script}", 0.0), "script"
            decided[how] += 1
        for script, items in todo.items():
            results = self._lingua().compute_language_confidence_values_in_parallel([t for _, t, _ in items])
            for (i, _, n), conf in zip(items, results, strict=True):
                # the top 6 are enough: a group rival ranked lower cannot be within GROUP_MARGIN (<= 0.2) of a top
                # that passed MIN_CONF (the values sum to 1)
                ranked = [
                    (code, c.value) for c in conf[:8] if (code := _code(c.language)) in self._codes[script]
                ]
                out[i] = _decide(script, n, ranked[:6])
        if slavic:
            results = self._south_slavic().compute_language_confidence_values_in_parallel(
                [t for _, t, _ in slavic]
            )
            for (i, _, n), conf in zip(slavic, results, strict=True):
                out[i] = _decide("Cyrl", n, [(_code(c.language), c.value) for c in conf])
        return out  # type: ignore[return-value]

    def _south_slavic(self):  # noqa: ANN202
        if self._slavic is None:
            # lazy: lingua loads its language models; only language identification needs it
            from lingua import Language, LanguageDetectorBuilder

            self._slavic = LanguageDetectorBuilder.from_languages(
                Language.BULGARIAN, Language.MACEDONIAN, Language.SERBIAN
            ).build()
        return self._slavic


def _decide(script: str, letters: int, conf: list[tuple[str, float]]) -> tuple[str, float]:
    """Turn lingua's ranked (code, confidence) list into an answer or `und_<Script>` (step 6)."""
    und = (f"und_{script}", 0.0)
    if not conf:
        return und
    top, p = conf[0]
    if p < (SHORT_MIN_CONF if letters < SHORT_LETTERS else MIN_CONF):
        return und
    if top in NEVER.get(script, ()):
        return und
    for group in GROUPS:
        if top in group:
            rival = max((v for c, v in conf[1:] if c in group), default=0.0)
            if p - rival < GROUP_MARGIN:
                return und
    return f"{CODE_MAP.get(top, top)}_{script}", float(p)
