"""Scripts of a text: letters per ISO 15924 script in one numpy pass, and the dominant script
(CJK resolved to Hans/Hant/Hani, Jpan or Hang), as the first steps of language identification
(ray_cluster.langid) take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

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

# Common simplified/traditional pairs where neither form is used by the other standard.
_SIMP = "们这说时会为个对发过与见动经应关问开长门东车语权国学实现产种义务总体达进还样业从机员电气华无书认识议论设计让请话读讲该调谁证护边极类观难劳军际场报区县亲历属约红级给结统织组线终维须项领题顾风飞马鸟鱼龙齐买卖农医卫图团圆声处备复头奋妇宁宪审导层岁币师带帮库废广张归态怀恶爱战执扩择担拥换据损举敌数断旧显术杀条杂构标树桥检欢毕汉没济测满灭灵灾热独环画疗监盖盘确礼离称积稳穷竞笔节简纪纯纸练细绍绝继绩续综罗职联胜脑艺药获虑补装览觉视规订讨训记许访评诉词译试诗诚询详误诸谈谋谓谢贝负贡财责败货质贫购贯贵费贸资赏赞赶轮转轻载较辆输迁运远违连迟选递遗邮邻释针钟钢钱铁银错镇闭间闻阅队阳阶陆陈险随隐韩页顶顺预频颜额饭饮馆验鸡黄龄"
_SIMP += "残惨仪优伤价众传债倾偿儿兴写冻净减击创刘则刚别剧劝办励势协单厂厅压参双变叹吗听启园围圣坏块坚奖孙宽宾寻尔尝岭帅庆异弃当录忧恋惊惯戏扫扬抢拟挂挥摄摆晋暂杨枪栏档梦楼欧汇汤泪泽洁浅润涨渐湿滚灯炉点烂爷牵犹猎献码础碍祸秃窃笼筑签紧纠纲纳纵纷纹绕绘络绪绿缓编缘网罢聪肃肠肤胁腾舰艰芦苏荐荣莲营蓝虽蛮衬袭誉讯课谨谱贪贺赋赖赛赵跃践踪轨软辈辖辞郑钓钥铃铜铺锅锦键镜闪闯闷闹阔阴阵韦顽顿飘饰饱驶驻骂骑骗鲜鸣齿惩愤盐矿砖狱灿罚"
_TRAD = "們這說時會為個對發過與見動經應關問開長門東車語權國學實現產種義務總體達進還樣業從機員電氣華無書認識議論設計讓請話讀講該調誰證護邊極類觀難勞軍際場報區縣親歷屬約紅級給結統織組線終維須項領題顧風飛馬鳥魚龍齊買賣農醫衛圖團圓聲處備復頭奮婦寧憲審導層歲幣師帶幫庫廢廣張歸態懷惡愛戰執擴擇擔擁換據損舉敵數斷舊顯術殺條雜構標樹橋檢歡畢漢沒濟測滿滅靈災熱獨環畫療監蓋盤確禮離稱積穩窮競筆節簡紀純紙練細紹絕繼績續綜羅職聯勝腦藝藥獲慮補裝覽覺視規訂討訓記許訪評訴詞譯試詩誠詢詳誤諸談謀謂謝貝負貢財責敗貨質貧購貫貴費貿資賞贊趕輪轉輕載較輛輸遷運遠違連遲選遞遺郵鄰釋針鐘鋼錢鐵銀錯鎮閉間聞閱隊陽階陸陳險隨隱韓頁頂順預頻顏額飯飲館驗雞黃齡"
_TRAD += "殘慘儀優傷價眾傳債傾償兒興寫凍淨減擊創劉則剛別劇勸辦勵勢協單廠廳壓參雙變嘆嗎聽啟園圍聖壞塊堅獎孫寬賓尋爾嘗嶺帥慶異棄當錄憂戀驚慣戲掃揚搶擬掛揮攝擺晉暫楊槍欄檔夢樓歐匯湯淚澤潔淺潤漲漸濕滾燈爐點爛爺牽猶獵獻碼礎礙禍禿竊籠築簽緊糾綱納縱紛紋繞繪絡緒綠緩編緣網罷聰肅腸膚脅騰艦艱蘆蘇薦榮蓮營藍雖蠻襯襲譽訊課謹譜貪賀賦賴賽趙躍踐蹤軌軟輩轄辭鄭釣鑰鈴銅鋪鍋錦鍵鏡閃闖悶鬧闊陰陣韋頑頓飄飾飽駛駐罵騎騙鮮鳴齒懲憤鹽礦磚獄燦罰"
_SIMP_ONLY, _TRAD_ONLY = set(_SIMP), set(_TRAD)
# Japanese shinjitai / kokuji forms used by neither simplified nor traditional Chinese.
_JPN_ONLY = set("権気広売読駅団図転労働円戦単発県検険経続様楽薬関対辺亜悪圧営拡覚歓挙験厳済剤雑児従処譲総帯択沢弾遅庁聴鉄伝闘悩脳廃髪払仏変黙訳覧両霊齢歯価込畑峠枠匂実乗歩応栄桜穏懐壊拝恵軽巻郷継撃黒砕斎釈収渋獣縦粛奨焼畳縄嬢寝粋酔穂摂専銭繊荘捜挿巣騒蔵臓滝鋳逓稲弐抜塀毎満揺謡頼竜猟緑涙塁暦歴録")  # fmt: skip


def _counts(text: str) -> dict[str, int]:
    return batch_counts([text])[0]


@cache
def _script_lut():  # noqa: ANN202 - a numpy array
    """Script index (into _SCRIPTS) of every code point up to the last one _RANGES covers; -1 elsewhere."""
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


def cjk_language(counts: dict[str, int], text: str) -> tuple[str, str]:
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


def analyse(text: str, counts: dict[str, int] | None = None) -> tuple[str, int, float, dict[str, int]]:
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
        script = cjk_language(counts, text)[1]
    return script, n, n / total, counts
