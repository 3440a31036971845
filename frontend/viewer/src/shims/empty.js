// Node built-ins the codecs' Emscripten glue names but never loads in a browser.
export default {};
