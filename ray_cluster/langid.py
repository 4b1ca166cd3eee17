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

MIN_CONF = 0.35  # lingua confidence below this: probably a language lingua does not know
SHORT_LETTERS = 20  # fewer letters than this is a "short" text (titles, fragments)
SHORT_MIN_CONF = 0.6
GROUP_MARGIN = 0.1  # top-vs-runner-up margin needed inside a group of close varieties
MAX_LINGUA_CHARS = 2000  # lingua's accuracy saturates long before; keeps one huge doc cheap
MAX_SCRIPT_CHARS = 20000

# ISO 15924 code -> ranges of its letters (and combining signs). Digits and punctuation are left out.
_RANGES = {
    "Latn": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02af\u1e00-\u1eff\u2c60-\u2c7f\ua720-\ua7ff\uff21-\uff3a\uff41-\uff5a",
    "Grek": "\u0370-\u0373\u0376-\u03ff\u1f00-\u1fff",
    "Cyrl": "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f",
    "Armn": "\u0531-\u0588\ufb13-\ufb17",
    "Hebr": "\u0591-\u05f4\ufb1d-\ufb4f",
    "Arab": "\u0620-\u065f\u066e-\u06d3\u06d5-\u06dc\u06ee\u06ef\u06fa-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefc",
    "Syrc": "\u0710-\u074f",
    "Thaa": "\u0780-\u07bf",
    "Deva": "\u0900-\u0963\u0970-\u097f\ua8e0-\ua8ff",
    "Beng": "\u0980-\u09e3\u09f0-\u09ff",
    "Guru": "\u0a00-\u0a65\u0a70-\u0a7f",
    "Gujr": "\u0a80-\u0ae5\u0af0-\u0aff",
    "Orya": "\u0b00-\u0b65\u0b70-\u0b7f",
    "Taml": "\u0b80-\u0be5\u0bf0-\u0bff",
    "Telu": "\u0c00-\u0c65\u0c70-\u0c7f",
    "Knda": "\u0c80-\u0ce5\u0cf0-\u0cff",
    "Mlym": "\u0d00-\u0d65\u0d70-\u0d7f",
    "Sinh": "\u0d80-\u0de5\u0df0-\u0dff",
    "Thai": "\u0e01-\u0e4f",
    "Laoo": "\u0e80-\u0ecf\u0edc-\u0eff",
    "Tibt": "\u0f00-\u0f1f\u0f34-\u0fff",
    "Mymr": "\u1000-\u103f\u1050-\u108f\u109a-\u109f\ua9e0-\ua9ff\uaa60-\uaa7f",
    "Geor": "\u10a0-\u10ff\u1c90-\u1cbf\u2d00-\u2d2f",
    "Hang": "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff",
    "Ethi": "\u1200-\u139f\u2d80-\u2ddf\uab00-\uab2f",
    "Cher": "\u13a0-\u13ff",
    "Cans": "\u1400-\u167f",
    "Khmr": "\u1780-\u17df\u19e0-\u19ff",
    "Mong": "\u1800-\u1805\u1820-\u18af",
    "Tfng": "\u2d30-\u2d7f",
    "Kana": "\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f",  # hiragana + katakana
    "Hani": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f",
}

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

# Common simplified/traditional pairs where neither form is used by the other standard.
_SIMP = "们这说时会为个对发过与见动经应关问开长门东车语权国学实现产种义务总体达进还样业从机员电气华无书认识议论设计让请话读讲该调谁证护边极类观难劳军际场报区县亲历属约红级给结统织组线终维须项领题顾风飞马鸟鱼龙齐买卖农医卫图团圆声处备复头奋妇宁宪审导层岁币师带帮库废广张归态怀恶爱战执扩择担拥换据损举敌数断旧显术杀条杂构标树桥检欢毕汉没济测满灭灵灾热独环画疗监盖盘确礼离称积稳穷竞笔节简纪纯纸练细绍绝继绩续综罗职联胜脑艺药获虑补装览觉视规订讨训记许访评诉词译试诗诚询详误诸谈谋谓谢贝负贡财责败货质贫购贯贵费贸资赏赞赶轮转轻载较辆输迁运远违连迟选递遗邮邻释针钟钢钱铁银错镇闭间闻阅队阳阶陆陈险随隐韩页顶顺预频颜额饭饮馆验鸡黄龄"
_SIMP += "残惨仪优伤价众传债倾偿儿兴写冻净减击创刘则刚别剧劝办励势协单厂厅压参双变叹吗听启园围圣坏块坚奖孙宽宾寻尔尝岭帅庆异弃当录忧恋惊惯戏扫扬抢拟挂挥摄摆晋暂杨枪栏档梦楼欧汇汤泪泽洁浅润涨渐湿滚灯炉点烂爷牵犹猎献码础碍祸秃窃笼筑签紧纠纲纳纵纷纹绕绘络绪绿缓编缘网罢聪肃肠肤胁腾舰艰芦苏荐荣莲营蓝虽蛮衬袭誉讯课谨谱贪贺赋赖赛赵跃践踪轨软辈辖辞郑钓钥铃铜铺锅锦键镜闪闯闷闹阔阴阵韦顽顿飘饰饱驶驻骂骑骗鲜鸣齿惩愤盐矿砖狱灿罚"
_TRAD = "們這說時會為個對發過與見動經應關問開長門東車語權國學實現產種義務總體達進還樣業從機員電氣華無書認識議論設計讓請話讀講該調誰證護邊極類觀難勞軍際場報區縣親歷屬約紅級給結統織組線終維須項領題顧風飛馬鳥魚龍齊買賣農醫衛圖團圓聲處備復頭奮婦寧憲審導層歲幣師帶幫庫廢廣張歸態懷惡愛戰執擴擇擔擁換據損舉敵數斷舊顯術殺條雜構標樹橋檢歡畢漢沒濟測滿滅靈災熱獨環畫療監蓋盤確禮離稱積穩窮競筆節簡紀純紙練細紹絕繼績續綜羅職聯勝腦藝藥獲慮補裝覽覺視規訂討訓記許訪評訴詞譯試詩誠詢詳誤諸談謀謂謝貝負貢財責敗貨質貧購貫貴費貿資賞贊趕輪轉輕載較輛輸遷運遠違連遲選遞遺郵鄰釋針鐘鋼錢鐵銀錯鎮閉間聞閱隊陽階陸陳險隨隱韓頁頂順預頻顏額飯飲館驗雞黃齡"
_TRAD += "殘慘儀優傷價眾傳債傾償兒興寫凍淨減擊創劉則剛別劇勸辦勵勢協單廠廳壓參雙變嘆嗎聽啟園圍聖壞塊堅獎孫寬賓尋爾嘗嶺帥慶異棄當錄憂戀驚慣戲掃揚搶擬掛揮攝擺晉暫楊槍欄檔夢樓歐匯湯淚澤潔淺潤漲漸濕滾燈爐點爛爺牽猶獵獻碼礎礙禍禿竊籠築簽緊糾綱納縱紛紋繞繪絡緒綠緩編緣網罷聰肅腸膚脅騰艦艱蘆蘇薦榮蓮營藍雖蠻襯襲譽訊課謹譜貪賀賦賴賽趙躍踐蹤軌軟輩轄辭鄭釣鑰鈴銅鋪鍋錦鍵鏡閃闖悶鬧闊陰陣韋頑頓飄飾飽駛駐罵騎騙鮮鳴齒懲憤鹽礦磚獄燦罰"
_SIMP_ONLY, _TRAD_ONLY = set(_SIMP), set(_TRAD)
# Japanese shinjitai / kokuji forms used by neither simplified nor traditional Chinese.
_JPN_ONLY = set("権気広売読駅団図転労働円戦単発県検険経続様楽薬関対辺亜悪圧営拡覚歓挙験厳済剤雑児従処譲総帯択沢弾遅庁聴鉄伝闘悩脳廃髪払仏変黙訳覧両霊齢歯価込畑峠枠匂実乗歩応栄桜穏懐壊拝恵軽巻郷継撃黒砕斎釈収渋獣縦粛奨焼畳縄嬢寝粋酔穂摂専銭繊荘捜挿巣騒蔵臓滝鋳逓稲弐抜塀毎満揺謡頼竜猟緑涙塁暦歴録")  # fmt: skip

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


def _counts(text: str) -> dict[str, int]:
    return batch_counts([text])[0]


@cache
def _script_lut():  # noqa: ANN202 - a numpy array
    """Script index (into _SCRIPTS) of every code point up to the last one _RANGES covers; -1 elsewhere."""
    import numpy as np

    spans = []
    for k, chars in enumerate(_RANGES.values()):
        i = 0
        while i < len(chars):
            if i + 2 < len(chars) and chars[i + 1] == "-":
                spans.append((ord(chars[i]), ord(chars[i + 2]), k))
                i += 3
            else:
                spans.append((ord(chars[i]), ord(chars[i]), k))
                i += 1
    lut = np.full(max(hi for _, hi, _ in spans) + 2, -1, dtype=np.int8)  # the last slot stays -1
    for lo, hi, k in spans:
        lut[lo : hi + 1] = k
    return lut


_SCRIPTS = list(_RANGES)


def batch_counts(texts: Sequence[str]) -> list[dict[str, int]]:
    """Letters per script of each text (its first MAX_SCRIPT_CHARS characters), in one numpy pass over
    the batch (a table lookup per code point), instead of one regex per script and text."""
    import numpy as np

    lut = _script_lut()
    cut = [t[:MAX_SCRIPT_CHARS] for t in texts]
    cps = np.frombuffer("".join(cut).encode("utf-32-le"), dtype=np.uint32)
    script = lut[np.minimum(cps, len(lut) - 1)]
    doc = np.repeat(np.arange(len(cut), dtype=np.int64), [len(t) for t in cut])
    hit = script >= 0
    n_s = len(_SCRIPTS)
    table = np.bincount(doc[hit] * n_s + script[hit], minlength=len(cut) * n_s).reshape(len(cut), n_s)
    out: list[dict[str, int]] = [{} for _ in cut]
    rows, cols = table.nonzero()
    for r, c, n in zip(rows.tolist(), cols.tolist(), table[rows, cols].tolist(), strict=True):
        out[r][_SCRIPTS[c]] = n
    return out


def _cjk(counts: dict[str, int], text: str) -> tuple[str, str]:
    """(language, script) for text whose dominant letters are Han/Kana/Hangul."""
    han, kana, hang = counts.get("Hani", 0), counts.get("Kana", 0), counts.get("Hang", 0)
    if hang >= kana and hang >= 0.1 * (han + kana + hang):  # Korean may mix in Hanja
        return "kor", "Hang"
    if kana >= 0.1 * (han + kana):  # Japanese prose is never nearly kana-free
        return "jpn", "Jpan"
    chars = set(text[:MAX_SCRIPT_CHARS])
    simp, trad = len(chars & _SIMP_ONLY), len(chars & _TRAD_ONLY)
    if len(chars & _JPN_ONLY) > max(simp, trad):
        return "jpn", "Jpan"
    return "cmn", "Hans" if simp > trad else "Hant" if trad > simp else "Hani"


def _analyse(text: str, counts: dict[str, int] | None = None) -> tuple[str, int, float, dict[str, int]]:
    """(dominant script, its letters, its share of all letters, counts); CJK scripts merged."""
    counts = _counts(text) if counts is None else counts
    total = sum(counts.values())
    if not total:
        return "Zyyy", 0, 0.0, counts
    merged = dict(counts)
    cjk = sum(merged.pop(s, 0) for s in ("Hani", "Kana", "Hang"))
    if cjk:
        merged["CJK"] = cjk
    script, n = max(merged.items(), key=lambda kv: kv[1])
    if script == "CJK":
        script = _cjk(counts, text)[1]
    return script, n, n / total, counts


def script_of(text: str) -> str:
    """ISO 15924 code of the dominant script of the letters in `text`; "Zyyy" when it has none."""
    return _analyse(text or "")[0]


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
    from importlib.metadata import PackageNotFoundError, version

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
            script, n, share, counts = _analyse(text, letters)
            if not n:
                out[i], how = ("und_Zyyy", 0.0), "no_letters"
            elif script in ("Hang", "Jpan", "Hans", "Hant", "Hani"):
                out[i], how = (f"{_cjk(counts, text)[0]}_{script}", share), "script"
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
