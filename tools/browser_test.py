"""Open every page of the built docs site in headless Chromium and check what a reader sees.

Usage: python tools/browser_test.py [--docs _docs] [--shots _artifacts/docs]   (build first: bash tools/build_docs.sh)

The expected pages, titles and API entries come from the notebooks and from mixup_nbdev/_modidx.py, so new notebooks
and symbols are checked with no change here; the sidebar comes from nbs/_quarto.yml, which must list every notebook.
For each page it checks: the title, the sidebar (its sections and every notebook, by title, in order), a table of contents, every exported symbol's heading with its parameters, every
picture loaded, no raw `#|` directives, `show_doc(` calls or Python warnings in outputs, no console errors or failed requests, and that every
link to a page of the site (and its #anchor) exists. Search is checked by typing each symbol's name in the search box.
Screenshots go to --shots (the first screen, and the whole page). Chromium is driven over the DevTools
protocol (websockets), so no chromedriver is needed. Exits 1 on any failure.
"""
import argparse, base64, contextlib, importlib, inspect, json, os, re, shutil, subprocess, sys, tempfile, threading, time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', '--hide-scrollbars', '--remote-debugging-port=0']
W, H = 1400, 900  # wide enough for Quarto's three columns: sidebar, page, table of contents


# ---------------------------------------------------------------- what the site should show

def expected(docs):
    "Pages (by output file) with their notebook and title, in sidebar order; symbols to document, by page."
    from nbdev.config import get_config
    from nbdev.doclinks import _nbpath2html, nbglob
    from nbdev.frontmatter import _md2dict
    from execnb.nbio import read_nb
    cfg = get_config()
    order = sidebar_spec(cfg.nbs_path)  # what the sidebar shows: section titles and notebooks, as nbs/_quarto.yml lists them
    nbs = [i for i in order if not isinstance(i, str)]
    found = {p.resolve() for p in nbglob(as_path=True)}
    unlisted = sorted(str(p.relative_to(cfg.nbs_path)) for p in found - set(nbs))
    if unlisted: raise SystemExit(f"notebooks missing from the sidebar, so no reader would find their pages: {unlisted}; "
                                  "add them to website.sidebar.contents in nbs/_quarto.yml")
    pages = {}
    for nb in nbs:
        md = next((c.source for c in read_nb(nb).cells if c.cell_type == 'markdown' and c.source.lstrip().startswith('# ')), None)
        if md is None: raise SystemExit(f"{nb}: no '# Title' markdown cell, so its page would have no title")
        out = _nbpath2html(nb.relative_to(cfg.nbs_path)).as_posix()
        pages[out] = dict(nb=nb.relative_to(ROOT).as_posix(), title=_md2dict(md)['title'], images=_has_images(nb))
    d = importlib.import_module(f'{cfg.lib_name}._modidx').d
    symbols = {}
    for mod, syms in d['syms'].items():
        m = importlib.import_module(mod)
        for full, (url, _) in syms.items():
            name = full[len(mod) + 1:]
            if '.' in name or name.startswith('_') or name not in getattr(m, '__all__', []): continue
            obj = getattr(m, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, '__module__', mod) != mod: continue
            page, _, anchor = url.partition('#')
            try: params = [p for p in inspect.signature(obj).parameters if p != 'self']
            except (TypeError, ValueError): params = []
            symbols.setdefault(page, []).append(dict(name=name, anchor=anchor, params=params))
    sidebar = [(pages[_nbpath2html(i.relative_to(cfg.nbs_path)).as_posix()]['title'], _nbpath2html(i).name) if not isinstance(i, str)
               else (i, '') for i in order]
    return pages, symbols, sidebar


def sidebar_spec(nbs_path):
    "The sidebar that nbs/_quarto.yml declares, flattened: section titles (str) and notebooks (absolute Paths), in order"
    import yaml
    y = yaml.safe_load((nbs_path / '_quarto.yml').read_text()) or {}
    items = ((y.get('website') or {}).get('sidebar') or {}).get('contents')
    if not items: raise SystemExit("nbs/_quarto.yml declares no website.sidebar.contents: list the notebooks there, in sections")
    def walk(items):
        for i in (items if isinstance(items, list) else [items]):
            if isinstance(i, dict) and 'section' in i:
                yield i['section']; yield from walk(i.get('contents', []))
                continue
            href = i.get('href') if isinstance(i, dict) else i
            if not isinstance(href, str): raise SystemExit(f"nbs/_quarto.yml sidebar: {i!r} is neither a page, a glob nor a section")
            paths = sorted(nbs_path.glob(href)) if '*' in href else [nbs_path / href]
            for p in paths:
                if not p.exists(): raise SystemExit(f"nbs/_quarto.yml sidebar lists {href}, which does not exist: fix the path or remove it")
                yield p.resolve()
    return list(walk(items))


def _has_images(nb):
    "Whether a notebook shows a picture in a cell that is not hidden"
    for c in json.loads(Path(nb).read_text())['cells']:
        if c['cell_type'] != 'code' or '#| hide' in ''.join(c['source']): continue
        if any(k.startswith('image/') for o in c.get('outputs', []) for k in o.get('data', {})): return True
    return False


# ---------------------------------------------------------------- serving and driving Chromium

class Quiet(SimpleHTTPRequestHandler):
    failed = []
    def log_message(self, *a): pass
    def send_error(self, code, *a, **k):
        if not self.path.endswith('favicon.ico'): Quiet.failed.append(f'{code} {self.path}')
        super().send_error(code, *a, **k)


def serve(docs):
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(docs)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}/'


def chromium():
    for exe in ('chromium', 'chromium-browser', 'google-chrome', 'chrome'):
        if shutil.which(exe): return shutil.which(exe)
    raise SystemExit("Chromium is not installed: run `bash tools/setup.sh` (it installs Debian's chromium package)")


class Browser:
    "One headless Chromium tab, driven over the DevTools protocol."
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix='chromium-')
        self.log = open(Path(self.profile) / 'stderr.log', 'w')
        self.proc = subprocess.Popen([chromium(), *FLAGS, f'--user-data-dir={self.profile}', f'--window-size={W},{H}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        port_file, end = Path(self.profile) / 'DevToolsActivePort', time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > end:
                raise SystemExit(f"Chromium did not start:\n{(Path(self.profile) / 'stderr.log').read_text()[-3000:]}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=30))
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(next(t for t in targets if t['type'] == 'page')['webSocketDebuggerUrl'], max_size=None, open_timeout=30))
        self.n, self.events = 0, []
        for m in ('Page.enable', 'Runtime.enable', 'Log.enable', 'Network.enable'): self(m)
        self('Emulation.setDeviceMetricsOverride', width=W, height=H, deviceScaleFactor=1, mobile=False)

    def __call__(self, method, timeout=60, **params):
        self.n += 1; n = self.n
        self.ws.send(json.dumps(dict(id=n, method=method, params=params)))
        end = time.time() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.time())))
            if msg.get('id') == n:
                if 'error' in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get('result', {})
            self.events.append(msg)

    def js(self, expr, timeout=30):
        r = self('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True, timeout=timeout * 1000)
        if 'exceptionDetails' in r: raise RuntimeError(f"JavaScript failed: {r['exceptionDetails']}")
        return r['result'].get('value')

    def open(self, url):
        "Load a page and wait until it and its pictures have loaded."
        self.events = []
        self('Page.navigate', url=url)
        self.js("""new Promise(ok => { const done = () => Promise.all([...document.images].map(i => i.complete ? 0 :
                     new Promise(r => { i.onload = i.onerror = r; }))).then(() => setTimeout(ok, 300));
                   document.readyState === 'complete' ? done() : addEventListener('load', done); })""")

    def errors(self):
        "Console errors, uncaught exceptions and failed loads since the page was opened."
        out = []
        for e in self.events:
            m, p = e.get('method'), e.get('params', {})
            if m == 'Runtime.exceptionThrown': out.append(p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails'].get('text'))
            elif m == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
                out.append(' '.join(str(a.get('value', a.get('description', ''))) for a in p.get('args', [])))
            elif m == 'Log.entryAdded' and p['entry']['level'] == 'error' and not p['entry'].get('url', '').endswith('favicon.ico'):
                out.append(f"{p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == 'Network.loadingFailed' and p.get('type') != 'Other': out.append(f"failed to load: {p.get('errorText')}")
        return out

    def shoot(self, path, full=False):
        if full:
            h = min(int(self.js('document.documentElement.scrollHeight')), 16000)
            r = self('Page.captureScreenshot', format='png', captureBeyondViewport=True,
                     clip=dict(x=0, y=0, width=W, height=h, scale=1))
        else: r = self('Page.captureScreenshot', format='png')
        Path(path).write_bytes(base64.b64decode(r['data']))

    def close(self):
        try: self('Browser.close', timeout=10)
        except Exception: pass
        self.stack.close()
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()
        self.log.close(); shutil.rmtree(self.profile, ignore_errors=True)


# what a page shows, read in the browser
REPORT = r"""(() => {
  const text = e => (e ? (e.innerText || e.textContent || '') : '').trim();
  const main = document.querySelector('main') || document.body;
  const heads = [...main.querySelectorAll('h1, h2, h3, h4')].map(h => {
    // what follows the heading up to the next heading or rule: show_doc's signature, docstring and any table
    let block = '', table = false, n = h.nextElementSibling;
    while (n && !/^(H[1-4]|HR)$/.test(n.tagName)) { block += '\n' + n.textContent; table = table || !!n.querySelector('table') || n.tagName === 'TABLE'; n = n.nextElementSibling; }
    return {level: +h.tagName[1], text: text(h), id: h.id || (h.parentElement.tagName === 'SECTION' ? h.parentElement.id : ''), block, table};
  });
  return {
    title: document.title, h1: text(document.querySelector('h1.title') || document.querySelector('h1')),
    heads, ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    sidebar: [...document.querySelectorAll('#quarto-sidebar a.sidebar-link, #quarto-sidebar a.sidebar-item-text')].map(a => ({text: text(a), href: a.href})),
    toc: document.querySelectorAll('#TOC a, nav[role="doc-toc"] a').length,
    images: [...main.querySelectorAll('img')].map(i => ({src: (i.currentSrc || i.src).slice(0, 60), ok: i.complete && i.naturalWidth > 0})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    body: main.innerText, outputs: [...main.querySelectorAll('.cell-output')].map(e => e.innerText).join('\n'), stylesheets: document.styleSheets.length,
    theme: getComputedStyle(document.querySelector('.navbar') || document.body).backgroundColor,
  };
})()"""

SEARCH = r"""(async q => {
  const box = [...document.querySelectorAll('.smalldocs-search, #quarto-search')].find(b => b.querySelector('input'));
  if (!box) return null;
  const input = box.querySelector('input');
  box.querySelectorAll('a.search-result, .aa-Item').forEach(a => a.remove());
  input.focus(); input.value = q; input.dispatchEvent(new Event('input', {bubbles: true}));
  for (let i = 0; i < 50; i++) {
    await new Promise(r => setTimeout(r, 100));
    const hits = [...box.querySelectorAll('a.search-result, .aa-Item a')].map(a => a.href);
    if (hits.length) return hits;
  }
  return [];
})"""


# ---------------------------------------------------------------- the checks

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--docs', default='_docs'); ap.add_argument('--shots', default='_artifacts/docs')
    a = ap.parse_args()
    os.chdir(ROOT)
    docs, shots = Path(a.docs).resolve(), Path(a.shots)
    if not (docs / 'index.html').exists(): raise SystemExit(f"{docs}/index.html is missing: build the site first (bash tools/build_docs.sh)")
    shutil.rmtree(shots, ignore_errors=True); shots.mkdir(parents=True)
    from nbdev.config import get_config
    cfg = get_config()
    published = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')).rstrip('/') + '/'
    pages, symbols, sidebar = expected(docs)
    fails, seen, bad_sidebar, t0 = [], {}, {}, time.time()
    def fail(page, msg): fails.append(f'{page}: {msg}')
    for page in symbols:
        if page not in pages: fail(page, f"_modidx.py documents {[s['name'] for s in symbols[page]]} on a page no notebook makes")
    srv, base = serve(docs)
    br = Browser()
    try:
        for page, want in pages.items():
            if not (docs / page).exists(): fail(page, f"not built (from {want['nb']})"); continue
            br.open(base + page)
            r = br.js(REPORT)
            seen[page] = r
            stem = page.removesuffix('.html').replace('/', '_')
            br.shoot(shots / f'{stem}.png'); br.shoot(shots / f'{stem}-full.png', full=True)
            # title, look, navigation
            if r['h1'] != want['title']: fail(page, f"title is {r['h1']!r}, the notebook says {want['title']!r}")
            if want['title'] not in r['title']: fail(page, f"<title> {r['title']!r} lacks {want['title']!r}")
            if r['stylesheets'] < 2: fail(page, 'the theme did not load (no stylesheets)')
            got = [(s['text'], urlsplit(s['href']).path.rsplit('/', 1)[-1] if s['href'] else '') for s in r['sidebar']]
            if got != sidebar: bad_sidebar[page] = got
            if sum(h['level'] == 2 for h in r['heads']) >= 2 and not r['toc']: fail(page, 'no table of contents')
            # API: every exported symbol has a heading, an anchor and its parameters
            for s in symbols.get(page, []):
                hs = [h for h in r['heads'] if h['text'] == s['name'] and h['level'] >= 2 and (s['name'] + '(' in h['block'].replace(' ', '') or h['table'])]
                if not hs: fail(page, f"no show_doc entry for `{s['name']}` (a heading followed by its signature)"); continue
                missing = [p for p in s['params'] if not re.search(rf'(?<![\w.]){re.escape(p)}(?!\w)', hs[0]['block'])]
                if missing: fail(page, f"`{s['name']}`: parameters {missing} are not documented")
                if s['anchor'] not in r['ids']: fail(page, f"`{s['name']}`: no #{s['anchor']} anchor, so links to it from other pages go nowhere")
            # what must not show
            bad_imgs = [i['src'] for i in r['images'] if not i['ok']]
            if bad_imgs: fail(page, f"pictures that did not load: {bad_imgs}")
            if want['images'] and not r['images']: fail(page, f"{want['nb']} has pictures but the page shows none")
            for raw in ('#|', 'show_doc('):
                if raw in r['body']: fail(page, f"raw {raw!r} is visible: ...{r['body'][max(0, r['body'].index(raw) - 80):r['body'].index(raw) + 40]!r}...")
            shown = re.search(r'Traceback \(most recent call last\)|\S+\.py:\d+: \w*Warning: .*', r['outputs'])
            if shown: fail(page, f"a Python error or warning is shown in an output: {shown[0][:160]!r}")
            for e in br.errors(): fail(page, f"console: {e}")
        for got in {repr(g): g for g in bad_sidebar.values()}.values():
            fail('sidebar', f"on {[p for p, g in bad_sidebar.items() if g == got]}: {got}, expected {sidebar}")
        # links between pages, and their anchors, including links written to the published site
        for page, r in seen.items():
            for href in set(r['links']):
                if href.startswith(published): href = base + href[len(published):]
                if not href.startswith(base): continue
                u = urlsplit(href); target = unquote(u.path[len(urlsplit(base).path):]) or 'index.html'
                if target.endswith('/'): target += 'index.html'
                if not (docs / target).exists(): fail(page, f"broken link to {target}"); continue
                if u.fragment and target in seen and unquote(u.fragment) not in seen[target]['ids']: fail(page, f"link to {target}#{u.fragment}: no such anchor")
        # search: each symbol's name finds its page
        br.open(base + 'index.html')
        missed = []
        for page, s in [(p, s) for p, syms in symbols.items() for s in syms]:
            hits = br.js(f"({SEARCH})({json.dumps(s['name'])})")
            if hits is None: fail('search', 'no search box'); break
            if not any(urlsplit(h).path.endswith('/' + page) for h in hits):
                missed.append(s['name'])
                if len(missed) <= 3: fail('search', f"searching {s['name']!r} does not find {page}: {hits[:5]}")
                if len(missed) == 3: fail('search', 'stopped after 3 failed searches'); break
        for e in br.errors(): fail('search', f"console: {e}")
    finally:
        br.close(); srv.shutdown()
    for f in Quiet.failed: fail('server', f'request failed: {f}')
    n_sym = sum(len(v) for v in symbols.values())
    print(f"browser test: {len(seen)} pages, {n_sym} API entries, {sum(len(r['images']) for r in seen.values())} pictures, "
          f"{sum(len(r['links']) for r in seen.values())} links in {time.time() - t0:.0f}s; screenshots in {shots}/")
    for f in fails: print('FAIL', f)
    return 1 if fails else 0


if __name__ == '__main__': sys.exit(main())
