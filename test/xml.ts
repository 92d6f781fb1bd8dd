// A minimal XML well-formedness check for the bench's SVG chart: balanced tags, quoted
// attributes, escaped text. Used by test/bench-report.test.ts and test/bench-report-lab.test.ts.

export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

export function parseXml(xml: string): XmlElement {
  const root: XmlElement = { name: "#document", attrs: {}, children: [], text: "" };
  const stack: XmlElement[] = [root];
  const tagRe = /<([^>]*)>/g;
  let pos = 0;
  const checkText = (t: string): void => {
    if (t.includes("<") || t.includes(">")) throw new Error(`raw angle bracket in text: ${t}`);
    const amp = t.match(/&[^;\s]*;?/g) ?? [];
    for (const a of amp) if (!/^&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);$/.test(a)) throw new Error(`bad entity ${a}`);
  };
  for (let m = tagRe.exec(xml); m !== null; m = tagRe.exec(xml)) {
    const text = xml.slice(pos, m.index);
    checkText(text);
    (stack[stack.length - 1] as XmlElement).text += text;
    pos = m.index + m[0].length;
    const body = m[1] as string;
    if (body.startsWith("?")) {
      if (!body.endsWith("?") || stack.length !== 1) throw new Error(`bad processing instruction <${body}>`);
      continue;
    }
    if (body.startsWith("/")) {
      const name = body.slice(1).trim();
      const open = stack.pop();
      if (open === undefined || open.name !== name) throw new Error(`</${name}> closes <${open?.name ?? "nothing"}>`);
      continue;
    }
    const selfClosing = body.endsWith("/");
    const inner = selfClosing ? body.slice(0, -1) : body;
    const nm = /^([A-Za-z_][\w:.-]*)/.exec(inner);
    if (nm === null) throw new Error(`bad tag <${body}>`);
    const attrs: Record<string, string> = {};
    let rest = inner.slice((nm[1] as string).length);
    const attrRe = /^\s+([A-Za-z_][\w:.-]*)="([^"<]*)"/;
    for (let a = attrRe.exec(rest); a !== null; a = attrRe.exec(rest)) {
      const key = a[1] as string;
      if (key in attrs) throw new Error(`duplicate attribute ${key}`);
      checkText(a[2] as string);
      attrs[key] = a[2] as string;
      rest = rest.slice(a[0].length);
    }
    if (rest.trim() !== "") throw new Error(`unparsed attribute text "${rest}" in <${body}>`);
    const el: XmlElement = { name: nm[1] as string, attrs, children: [], text: "" };
    (stack[stack.length - 1] as XmlElement).children.push(el);
    if (!selfClosing) stack.push(el);
  }
  checkText(xml.slice(pos));
  if (stack.length !== 1) throw new Error(`unclosed <${(stack[stack.length - 1] as XmlElement).name}>`);
  if (root.children.length !== 1) throw new Error("expected exactly one root element");
  return root.children[0] as XmlElement;
}
