// Bundle the viewer into ../../static/viewer/: the page script, the decoding worker, the codecs.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', '..', 'static', 'viewer');
const modules = join(here, 'node_modules', '@cornerstonejs');

// The codecs' Emscripten glue names Node built-ins it loads only under Node: an empty module.
const NODE_BUILTINS = /^(node:)?(fs|path|crypto|module|url|worker_threads|child_process|os|util)$/;
const nodeShims = {
  name: 'node-shims',
  setup(builder) {
    builder.onResolve({ filter: NODE_BUILTINS }, () => ({ path: join(here, 'src', 'shims', 'empty.js') }));
  },
};

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'codecs'), { recursive: true });

const common = {
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  legalComments: 'linked',
  logLevel: 'info',
  plugins: [nodeShims],
  define: { 'process.env.NODE_ENV': '"production"' },
};

// The page script finds the worker next to itself: new URL('./decodeImageFrameWorker.js', import.meta.url).
await build({ ...common, entryPoints: [join(here, 'src', 'main.js')], outfile: join(out, 'viewer.js') });
await build({
  ...common,
  entryPoints: [join(modules, 'dicom-image-loader', 'dist', 'esm', 'decodeImageFrameWorker.js')],
  outfile: join(out, 'decodeImageFrameWorker.js'),
});

// The WebAssembly decoders, found through the loader's wasmBasePath (/static/viewer/codecs/).
const codecs = {
  'codec-charls/dist/charlswasm_decode.wasm': 'charlswasm_decode.wasm',
  'codec-openjpeg/dist/openjpegwasm_decode.wasm': 'openjpegwasm_decode.wasm',
  'codec-libjpeg-turbo-8bit/dist/libjpegturbowasm_decode.wasm': 'libjpegturbowasm_decode.wasm',
  'codec-openjph/dist/openjphjs.wasm': 'openjphjs.wasm',
};
copyFileSync(join(here, 'src', 'viewer.css'), join(out, 'viewer.css'));
for (const [source, name] of Object.entries(codecs)) {
  copyFileSync(join(modules, source), join(out, 'codecs', name));
}
