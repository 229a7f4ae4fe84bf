"""The `show_doc` renderer of the docs site (settings.ini: `renderer = mixup_nbdev_docs.TableRenderer`), and its
links from backticked names (settings.ini: `procs = mixup_nbdev_docs:PageLinks`, in place of nbdev's `add_links`).

Development only: it needs nbdev, so it is not part of the package. `bash tools/setup.sh` puts this folder on the
development venv's path (a .pth file), where nbdev's `show_doc` imports it. Explained, with its tests, on the
docs page *API tables* (nbs/24_showdoc.ipynb).
"""
from __future__ import annotations
import inspect
from fastcore.docments import DocmentTbl, _bold, _list2row, _maybe_nm, docments
from nbdev.doclinks import NbdevLookup
from nbdev.showdoc import BasicMarkdownRenderer

__all__ = ['TableRenderer', 'PageLinks']


def _param(p:inspect.Parameter)->str:
    "`p` as in a signature, with annotations unquoted"
    s = ('*' if p.kind is p.VAR_POSITIONAL else '**' if p.kind is p.VAR_KEYWORD else '') + p.name
    if p.annotation is not p.empty: s += ':' + inspect.formatannotation(p.annotation).strip("'").replace(' ', '')
    if p.default is not p.empty: s += f'={p.default!r}'
    return s


def _cell(o)->str:
    "A table cell: a `|` inside it, as in a union type `str|LabelKernel`, escaped so that it does not end the cell"
    return _maybe_nm(o).replace('|', '\\|')


def _shared(obj)->list:
    "Where a parameter of `obj` with no docment of its own is documented: for a class, its base classes' `__init__`, then the mixing function it names (`func`)"
    if not inspect.isclass(obj): return []
    func = getattr(obj, 'func', None)
    return [c.__init__ for c in obj.__mro__[1:] if '__init__' in vars(c)] + ([func] if callable(func) else [])


class _Table(DocmentTbl):
    "fastcore's table of parameters, with each cell escaped, and a shared argument's docment written once, where it is shared from"
    def __init__(self, obj, **kwargs):
        super().__init__(obj, **kwargs)
        for src in _shared(obj):
            missing = [k for k, d in self.dm.items() if k != 'return' and d['docment'] is inspect._empty]
            if not missing: break
            try: dm = docments(src, full=True)
            except (TypeError, ValueError, OSError): continue
            for k in missing:
                if k in dm and dm[k]['docment']: self.dm[k]['docment'] = dm[k]['docment']
    def _row(self, nm, props): return [nm] + [_cell(props[c]) for c in self._columns]
    @property
    def return_str(self): return _list2row(['**Returns**'] + [_bold(_cell(self.dm['return'][c])) for c in self._columns])


class TableRenderer(BasicMarkdownRenderer):
    "`show_doc` renderer: heading, one-line signature and docstring, then a Type/Default/Details table of the parameters"
    def _repr_markdown_(self):
        md = '---\n\n'
        src = NbdevLookup().code(self.fn)
        if src: md += f'[source]({src.removesuffix("#LNone")}){{target="_blank" style="float:right; font-size:smaller"}}\n\n'
        md += f'{"#"*self.title_level} {self.nm}\n\n'
        if self.sig is not None:
            params = ', '.join(_param(p) for p in self.sig.parameters.values() if p.name != 'self')
            md += f'> **{self.nm}** `({params})`\n\n'
        if self.docs: md += f'*{self.docs.splitlines()[0]}*' + ''.join(f'\n{l}' for l in self.docs.splitlines()[1:]) + '\n\n'
        try: tbl = _Table(self.sym)._repr_markdown_()
        except (TypeError, ValueError): tbl = ''  # no signature (a property, a builtin)
        return md + tbl


def _page_module(nb)->str|None:
    "The module a notebook exports to (its `default_exp`), or None"
    for c in nb.cells:
        exp = getattr(c, 'directives_', {}).get('default_exp')
        if exp: return exp[0]
    return None


class PageLinks:
    """nbdev's `add_links` (backticked names link to their docs), where a name defined in several modules links to
    this page's own, else to the one outside `compat`: `MixUp` is the fastai callback, but on the torchvision drop-in's
    page its `MixUp`. nbdev links the module first in alphabetical order."""
    def __init__(self, nb):
        self.nl = NbdevLookup()
        self.nl.syms = dict(self.nl.syms)  # nbdev caches the table that every page shares
        lib = self.nl.entries.get('mixup_nbdev', {}).get('syms', {})
        here = _page_module(nb)
        here = here and f'mixup_nbdev.{here}'
        rank = lambda m: (m != here, '.compat.' in m, m)
        for mod in sorted(lib, key=rank, reverse=True):  # the most preferred module is written last, so it wins
            self.nl.syms.update({k.removeprefix(f'{mod}.'): v for k, v in lib[mod].items()})

    def __call__(self, cell):
        if cell.cell_type == 'markdown': cell.source = self.nl.linkify(cell.source)
        for o in cell.get('outputs', []):
            if hasattr(o, 'data') and hasattr(o['data'], 'text/markdown'):
                o.data['text/markdown'] = [self.nl.link_line(s) for s in o.data['text/markdown']]
