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
6. Latin/Cyrillic/Arabic/Devanagari: lingua built from its languages of these four scripts only (no
   models to load for scripts decided above; lingua itself keeps only languages whose alphabet matches
   the text). Its answer becomes `und_<Script>` when
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
   Both `NEVER` rules were chosen after seeing the UDHR benchmark (NOTES.md lists the same misses).
7. Any other script -> `und_<Script>`, score 0.

lingua's codes are mapped to the corpus's (msa->zlm, ara->arb, fas->pes, aze->azj, sqi->als, mon->khk,
swa->swh, zho->cmn). `und_*` answers always have score 0.
"""

from __future__ import annotations

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
_SCRIPT_RX = {s: re.compile(f"[{r}]") for s, r in _RANGES.items()}

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


def _counts(text: str) -> dict[str, int]:
    t = text[:MAX_SCRIPT_CHARS]
    return {s: n for s, rx in _SCRIPT_RX.items() if (n := len(rx.findall(t)))}


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


def _analyse(text: str) -> tuple[str, int, float, dict[str, int]]:
    """(dominant script, its letters, its share of all letters, counts); CJK scripts merged."""
    counts = _counts(text)
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


@lru_cache(maxsize=1)
def _lingua_version() -> str:
    from importlib.metadata import version

    return version("lingua-language-detector")


class LanguageIdentifier:
    """Build once (preloading lingua's models takes seconds), then call `detect` on batches."""

    def __init__(self, preload: bool = True) -> None:
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
        self._detector = (builder.with_preloaded_language_models() if preload else builder).build()

    @staticmethod
    def info() -> dict:
        return {"detector": "lingua-language-detector", "version": _lingua_version(),
                "rules": "ray_cluster.langid", "min_conf": MIN_CONF, "group_margin": GROUP_MARGIN}  # fmt: skip

    def detect(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(lang code, score) per text; never raises on odd input (None/non-str count as empty)."""
        out: list[tuple[str, float] | None] = [None] * len(texts)
        todo: dict[str, list[tuple[int, str, int]]] = {}
        for i, raw in enumerate(texts):
            text = raw if isinstance(raw, str) else ""
            # lone surrogates (from bad decoding) would make lingua's Rust side raise
            text = text.encode("utf-8", errors="replace").decode("utf-8")
            script, n, share, counts = _analyse(text)
            if not n:
                out[i] = ("und_Zyyy", 0.0)
            elif script in ("Hang", "Jpan", "Hans", "Hant", "Hani"):
                out[i] = (f"{_cjk(counts, text)[0]}_{script}", share)
            elif script in SCRIPT_LANG:
                lang = "ydd" if script == "Hebr" and _YDD.search(text) else SCRIPT_LANG[script]
                out[i] = (f"{lang}_{script}", share * (0.9 if script in _SHARED_SCRIPT else 1.0))
            elif (lang := _rule_lang(script, text[:MAX_SCRIPT_CHARS], n)) is not None:
                out[i] = (f"{lang}_{script}", 0.9 * share)
            elif script in LINGUA_SCRIPTS and len({c for c in text[:200].casefold() if c.isalpha()}) < 5:
                out[i] = (f"und_{script}", 0.0)  # "kkkkk", "hahaha": too few distinct letters to be language
            elif script in LINGUA_SCRIPTS:
                todo.setdefault(script, []).append((i, text[:MAX_LINGUA_CHARS], n))
            else:
                out[i] = (f"und_{script}", 0.0)
        for script, items in todo.items():
            results = self._detector.compute_language_confidence_values_in_parallel([t for _, t, _ in items])
            for (i, _, n), conf in zip(items, results, strict=True):
                # the top 6 are enough: a group rival ranked lower cannot be within GROUP_MARGIN (<= 0.2) of a top
                # that passed MIN_CONF (the values sum to 1)
                ranked = [
                    (code, c.value) for c in conf[:8] if (code := _code(c.language)) in self._codes[script]
                ]
                out[i] = _decide(script, n, ranked[:6])
        return out  # type: ignore[return-value]


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
