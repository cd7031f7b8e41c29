// `pii-flags`: finds personal data in a text with rules, in JavaScript: e-mail addresses, phone
// numbers, payment card numbers (Luhn-checked), IBANs (mod-97-checked) and IPv4 addresses, as
// entities with UTF-8 byte offsets into the text. No weights; works on any encoder.
//
// Config: `kinds` (default all of EMAIL, PHONE, CARD, IBAN, IP) limits what is reported.

import * as hs from "../sdk-js/headstream.js";

const KINDS = ["EMAIL", "PHONE", "CARD", "IBAN", "IP"];

const PATTERNS = {
  // Non-ASCII letters as a range: the engine is built without ICU, so no \p{L}.
  EMAIL: /[A-Za-z0-9\u00C0-\uFFFF._%+-]+@[A-Za-z0-9\u00C0-\uFFFF-]+(?:\.[A-Za-z0-9\u00C0-\uFFFF-]+)*\.[A-Za-z\u00C0-\uFFFF]{2,}/gu,
  // Groups of digits with separators (a bare run of digits is an order number, not a phone).
  PHONE: /(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})(?:[ .-]\d{2,4}){2,3}(?!\w)/gu,
  CARD: /(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)/g,
  IBAN: /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b/g,
  IP: /(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])/g,
};

function luhn(digits) {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

function ibanValid(text) {
  const s = text.replace(/ /g, "");
  const moved = s.slice(4) + s.slice(0, 4);
  let rest = 0;
  for (const ch of moved) {
    const v = ch >= "A" ? ch.charCodeAt(0) - 55 : ch.charCodeAt(0) - 48;
    rest = (v > 9 ? rest * 100 + v : rest * 10 + v) % 97;
  }
  return rest === 1;
}

const CHECKS = {
  CARD: (m) => luhn(m.replace(/[ -]/g, "")),
  IBAN: ibanValid,
  // E.164: at most 15 digits (sixteen grouped digits are a card number, valid or not).
  PHONE: (m) => {
    const digits = m.replace(/\D/g, "").length;
    return digits >= 7 && digits <= 15;
  },
};

class PiiFlags extends hs.Head {
  static describe() {
    return hs.describe("pii-flags", "1.0.0", "tokens", { labels: KINDS });
  }

  constructor(config, assets) {
    super();
    const kinds = config.get("kinds", KINDS);
    if (!Array.isArray(kinds) || kinds.some((k) => !KINDS.includes(k))) {
      throw new hs.ConfigInvalid(`\`kinds\` must be a list of ${KINDS.join(", ")}`);
    }
    this.kinds = kinds;
  }

  runOne(item) {
    const found = [];
    const taken = [];
    // Earlier kinds win overlaps (an IBAN's digits are not also a card number).
    for (const kind of ["EMAIL", "IBAN", "CARD", "IP", "PHONE"]) {
      if (!this.kinds.includes(kind)) continue;
      for (const m of item.text.matchAll(PATTERNS[kind])) {
        const [start, end] = [m.index, m.index + m[0].length];
        if (taken.some(([s, e]) => start < e && s < end)) continue;
        if (CHECKS[kind] && !CHECKS[kind](m[0])) continue;
        taken.push([start, end]);
        const [bs, be] = hs.byteSpan(item.text, start, end);
        found.push({ text: m[0], label: kind, start: bs, end: be, score: 1.0 });
      }
    }
    found.sort((a, b) => a.start - b.start);
    return hs.entities(found);
  }
}

export const head = hs.exportHead(PiiFlags);
