// Parses every ```mermaid block of the Markdown files given, with Mermaid's own parser
// (the `mermaid` package under jsdom: parsing needs a DOM, no browser). Exits 1 on the
// first block that does not parse, naming the file and the block's line.
import { readFileSync } from 'node:fs';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
for (const name of ['DOMParser', 'Element', 'HTMLElement', 'Node']) {
  if (!(name in globalThis)) globalThis[name] = dom.window[name];
}
const { default: mermaid } = await import('mermaid');
mermaid.initialize({ startOnLoad: false });

let blocks = 0;
for (const file of process.argv.slice(2)) {
  const lines = readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '```mermaid') continue;
    const start = i + 1;
    const body = [];
    for (i++; i < lines.length && lines[i].trim() !== '```'; i++) body.push(lines[i]);
    try {
      const parsed = await mermaid.parse(body.join('\n'));
      console.log(`ok   ${file}:${start} ${parsed.diagramType}`);
      blocks++;
    } catch (e) {
      console.error(`FAIL ${file}:${start}: ${e.message}`);
      process.exit(1);
    }
  }
}
if (blocks === 0) {
  console.error('no mermaid block found');
  process.exit(1);
}
