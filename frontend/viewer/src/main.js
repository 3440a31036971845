// The diagnostic viewer: Cornerstone3D stack, compare and MPR layouts over our DICOMweb.
import {
  Enums,
  RenderingEngine,
  cornerstoneStreamingImageVolumeLoader,
  eventTarget,
  getRenderingEngine,
  init as coreInit,
  imageLoader,
  getShouldUseCPURendering,
  setVolumesForViewports,
  utilities,
  volumeLoader,
} from '@cornerstonejs/core';
import {
  AngleTool,
  EllipticalROITool,
  Enums as ToolEnums,
  LengthTool,
  PanTool,
  PlanarRotateTool,
  RectangleROITool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
  utilities as toolUtilities,
} from '@cornerstonejs/tools';
import dicomImageLoader from '@cornerstonejs/dicom-image-loader';
import { first, loadFirstImage, loadSeries, personName } from './dicomweb.js';
import { SCHEME as RENDERED_SCHEME, loadRenderedImage } from './renderedLoader.js';

const ENGINE_ID = 'rispacs-viewer';
const STACK_GROUP = 'stack-tools';
const VOLUME_GROUP = 'volume-tools';
const CINE_FPS = 10;
const PRESETS = {
  brain: { center: 40, width: 80 },
  lung: { center: -600, width: 1500 },
  bone: { center: 300, width: 1500 },
  abdomen: { center: 40, width: 400 },
};
const MEASURING_TOOLS = [
  LengthTool.toolName,
  AngleTool.toolName,
  RectangleROITool.toolName,
  EllipticalROITool.toolName,
];
const DRAG_TOOLS = [WindowLevelTool.toolName, PanTool.toolName, ZoomTool.toolName, PlanarRotateTool.toolName];
const { MouseBindings } = ToolEnums;

const config = JSON.parse(document.getElementById('viewer-config').textContent);
const state = {
  engine: null,
  layout: 'stack',
  series: null, // the loaded series of the main viewport
  seriesUid: null,
  prior: null,
  primaryTool: WindowLevelTool.toolName,
  cine: false,
  syncing: false,
};
const $ = (selector) => document.querySelector(selector);
const status = (text) => {
  $('#viewer-status').textContent = text;
};

function fmt(number, digits = 0) {
  return Number.isFinite(number) ? number.toFixed(digits) : '—';
}

// Overlays in the four corners of a viewport.
function overlayFor(element) {
  let overlay = element.parentElement.querySelector('.viewer-overlay');
  if (!overlay) {
    overlay = document.createElement('div');
    overlay.className = 'viewer-overlay';
    overlay.innerHTML =
      '<div class="tl"></div><div class="tr"></div><div class="bl"></div><div class="br"></div>';
    element.parentElement.appendChild(overlay);
  }
  return overlay;
}

function updateOverlay(viewportId) {
  const engine = state.engine;
  const viewport = engine && engine.getViewport(viewportId);
  if (!viewport) return;
  const element = viewport.element;
  const info = element.viewerInfo || {};
  const overlay = overlayFor(element);
  const study = info.study || config.study;
  overlay.querySelector('.tl').textContent = [
    study.patientName,
    `ID ${study.patientId}`,
    study.birthDate ? `Born ${study.birthDate} ${study.sex}` : study.sex,
  ].join('\n');
  overlay.querySelector('.tr').textContent = [
    study.description,
    `${study.date} ${study.accession ? `· ${study.accession}` : ''}`,
    info.seriesLabel || '',
  ].join('\n');
  const lines = [];
  if (info.orientation) {
    // A volume viewport: its orientation and the slice through the volume.
    const count = viewport.getNumberOfSlices ? viewport.getNumberOfSlices() : 0;
    lines.push(`${info.orientation} ${viewport.getSliceIndex() + 1}/${count}`);
  } else if (viewport.getImageIds) {
    const ids = viewport.getImageIds();
    const index = viewport.getCurrentImageIdIndex();
    lines.push(`Im ${index + 1}/${ids.length}`);
    const meta = info.series && info.series.byImageId.get(ids[index]);
    if (meta) {
      const position = meta.item['00200032'] && meta.item['00200032'].Value;
      const location = first(meta.item, '00201041');
      if (position) lines.push(`Pos ${position.map((v) => fmt(Number(v), 1)).join(', ')}`);
      else if (location !== undefined) lines.push(`Loc ${fmt(Number(location), 1)}`);
      if (meta.frames > 1) lines.push(`Frame ${meta.frame}/${meta.frames}`);
    }
  }
  overlay.querySelector('.bl').textContent = lines.join('\n');
  const { voiRange, invert } = viewport.getProperties ? viewport.getProperties() : {};
  let wl = '';
  if (voiRange) {
    const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(
      voiRange.lower,
      voiRange.upper,
    );
    wl = `W ${fmt(windowWidth)} L ${fmt(windowCenter)}${invert ? ' (inv)' : ''}`;
  }
  const zoom = viewport.getZoom ? `Zoom ${fmt(viewport.getZoom(), 2)}` : '';
  overlay.querySelector('.br').textContent = [wl, zoom].join('\n');
  overlay.querySelector('.br').dataset.wl = wl;
}

function watchViewport(element, viewportId) {
  const refresh = () => updateOverlay(viewportId);
  for (const name of [
    Enums.Events.IMAGE_RENDERED,
    Enums.Events.VOI_MODIFIED,
    Enums.Events.STACK_NEW_IMAGE,
    Enums.Events.VOLUME_NEW_IMAGE,
    Enums.Events.CAMERA_MODIFIED,
  ]) {
    element.addEventListener(name, refresh);
  }
  element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => syncScroll(viewportId));
  element.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
    element.dataset.rendered = 'true';
  });
}

// Keep the compared viewports at the same relative position in their stacks.
function syncScroll(sourceId) {
  if (state.layout !== 'compare' || state.syncing || !$('#sync-scroll').checked) return;
  const source = state.engine.getViewport(sourceId);
  const targetId = sourceId === 'main' ? 'prior' : 'main';
  const target = state.engine.getViewport(targetId);
  if (!source || !target || !target.getImageIds) return;
  const from = source.getImageIds().length - 1 || 1;
  const to = target.getImageIds().length - 1;
  const index = Math.round((source.getCurrentImageIdIndex() / from) * to);
  if (index === target.getCurrentImageIdIndex()) return;
  state.syncing = true;
  target.setImageIdIndex(index).finally(() => {
    state.syncing = false;
  });
}

function viewportElements(count) {
  const grid = $('#viewer-grid');
  grid.innerHTML = '';
  grid.dataset.count = String(count);
  const elements = [];
  for (let i = 0; i < count; i += 1) {
    const cell = document.createElement('div');
    cell.className = 'viewer-cell';
    const element = document.createElement('div');
    element.className = 'viewer-viewport';
    element.oncontextmenu = (event) => event.preventDefault();
    cell.appendChild(element);
    grid.appendChild(cell);
    elements.push(element);
  }
  return elements;
}

function resetEngine() {
  for (const id of [STACK_GROUP, VOLUME_GROUP]) {
    const group = ToolGroupManager.getToolGroup(id);
    if (group) ToolGroupManager.destroyToolGroup(id);
  }
  stopCine();
  if (state.engine) state.engine.destroy();
  state.engine = new RenderingEngine(ENGINE_ID);
}

function makeToolGroup(id, viewportIds) {
  const group = ToolGroupManager.createToolGroup(id);
  for (const name of [...DRAG_TOOLS, StackScrollTool.toolName, ...MEASURING_TOOLS]) {
    group.addTool(name);
  }
  for (const viewportId of viewportIds) group.addViewport(viewportId, ENGINE_ID);
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  applyPrimaryTool(group);
  return group;
}

function applyPrimaryTool(group) {
  for (const name of [...MEASURING_TOOLS, WindowLevelTool.toolName, PlanarRotateTool.toolName]) {
    if (name !== state.primaryTool) group.setToolPassive(name);
  }
  if (state.primaryTool === PanTool.toolName || state.primaryTool === ZoomTool.toolName) {
    group.setToolActive(state.primaryTool, {
      bindings: [
        { mouseButton: MouseBindings.Primary },
        { mouseButton: state.primaryTool === PanTool.toolName ? MouseBindings.Auxiliary : MouseBindings.Secondary },
      ],
    });
  } else {
    group.setToolActive(state.primaryTool, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  }
}

function selectTool(name) {
  state.primaryTool = name;
  for (const id of [STACK_GROUP, VOLUME_GROUP]) {
    const group = ToolGroupManager.getToolGroup(id);
    if (group) applyPrimaryTool(group);
  }
  for (const button of document.querySelectorAll('[data-tool]')) {
    button.setAttribute('aria-pressed', String(button.dataset.tool === name));
  }
}

function seriesLabel(series) {
  return `Se ${series.number ?? '—'} ${series.modality} ${series.description || ''}`.trim();
}

// Series metadata, fetched once per series (the first one while Cornerstone starts).
const seriesCache = new Map();
const seriesDone = new Set();
const firstImages = new Map();
function firstImageOf(seriesUid) {
  if (!firstImages.has(seriesUid)) {
    firstImages.set(seriesUid, loadFirstImage(config.dicomweb, config.study.uid, seriesUid).catch(() => null));
  }
  return firstImages.get(seriesUid);
}
function seriesOf(studyUid, seriesUid) {
  if (!seriesCache.has(seriesUid)) {
    const promise = loadSeries(config.dicomweb, studyUid, seriesUid);
    promise.catch(() => seriesCache.delete(seriesUid));
    seriesCache.set(seriesUid, promise);
  }
  return seriesCache.get(seriesUid);
}

async function showStack(element, viewportId, studyUid, seriesInfo, studyFacts) {
  const loaded = await seriesOf(studyUid, seriesInfo.uid);
  if (!loaded.imageIds.length) throw new Error('This series has no images.');
  element.viewerInfo = { series: loaded, study: studyFacts, seriesLabel: seriesLabel(seriesInfo) };
  const viewport = state.engine.getViewport(viewportId);
  await viewport.setStack(loaded.imageIds, 0);
  viewport.render();
  updateOverlay(viewportId);
  return loaded;
}

async function openStack(seriesUid) {
  const series = config.series.find((item) => item.uid === seriesUid) || config.series[0];
  state.layout = 'stack';
  state.seriesUid = series.uid;
  markSelected();
  resetEngine();
  const [element] = viewportElements(1);
  state.engine.enableElement({ viewportId: 'main', type: Enums.ViewportType.STACK, element });
  watchViewport(element, 'main');
  makeToolGroup(STACK_GROUP, ['main']);
  status(`Loading ${seriesLabel(series)}…`);
  let quickIds = null;
  if (!seriesDone.has(series.uid) && !seriesCache.has(series.uid)) {
    // Show the first image as soon as it alone is known; the whole stack's metadata (every
    // file read on the server) is asked for only then, so that it does not delay it.
    const quick = await firstImageOf(series.uid);
    if (quick && state.seriesUid === series.uid && state.layout === 'stack') {
      element.viewerInfo = { series: quick, study: config.study, seriesLabel: seriesLabel(series) };
      await state.engine.getViewport('main').setStack(quick.imageIds, 0);
      quickIds = quick.imageIds;
    }
  }
  const whole = seriesOf(config.study.uid, series.uid);
  if (state.seriesUid !== series.uid || state.layout !== 'stack') return;
  const shown = state.engine.getViewport('main').getCurrentImageId();
  state.series = await whole;
  seriesDone.add(series.uid);
  if (state.seriesUid !== series.uid || state.layout !== 'stack') return;
  element.viewerInfo = { series: state.series, study: config.study, seriesLabel: seriesLabel(series) };
  const viewport = state.engine.getViewport('main');
  const ids = state.series.imageIds;
  const same = quickIds && quickIds.length === ids.length && quickIds.every((id, i) => id === ids[i]);
  if (!same) {
    // The whole stack replaces the first image alone (a one-image series keeps it as it is).
    await viewport.setStack(ids, Math.max(0, ids.indexOf(shown)));
    viewport.render();
  }
  updateOverlay('main');
  status(`${seriesLabel(series)} · ${ids.length} image(s)`);
  $('#mpr').disabled = !state.series.volumeReady || getShouldUseCPURendering();
}

async function openCompare(prior) {
  state.layout = 'compare';
  state.prior = prior;
  resetEngine();
  const [main, other] = viewportElements(2);
  state.engine.setViewports([
    { viewportId: 'main', type: Enums.ViewportType.STACK, element: main },
    { viewportId: 'prior', type: Enums.ViewportType.STACK, element: other },
  ]);
  watchViewport(main, 'main');
  watchViewport(other, 'prior');
  makeToolGroup(STACK_GROUP, ['main', 'prior']);
  const current = config.series.find((item) => item.uid === state.seriesUid) || config.series[0];
  const priorSeries =
    prior.series.find((item) => item.modality === current.modality) || prior.series[0];
  status(`Comparing with the study of ${prior.date}…`);
  await Promise.all([
    showStack(main, 'main', config.study.uid, current, config.study),
    showStack(other, 'prior', prior.uid, priorSeries, { ...config.study, ...prior }),
  ]);
  status(`Current and prior (${prior.date}) side by side; scrolling is synchronised.`);
}

async function openMpr() {
  const series = config.series.find((item) => item.uid === state.seriesUid) || config.series[0];
  const loaded = await seriesOf(config.study.uid, series.uid);
  state.layout = 'mpr';
  resetEngine();
  const elements = viewportElements(3);
  const orientations = [
    ['axial', Enums.OrientationAxis.AXIAL],
    ['sagittal', Enums.OrientationAxis.SAGITTAL],
    ['coronal', Enums.OrientationAxis.CORONAL],
  ];
  state.engine.setViewports(
    orientations.map(([name, orientation], i) => ({
      viewportId: name,
      type: Enums.ViewportType.ORTHOGRAPHIC,
      element: elements[i],
      defaultOptions: { orientation },
    })),
  );
  orientations.forEach(([name], i) => {
    elements[i].viewerInfo = { seriesLabel: seriesLabel(series), orientation: name };
    elements[i].dataset.orientation = name;
    watchViewport(elements[i], name);
  });
  makeToolGroup(VOLUME_GROUP, orientations.map(([name]) => name));
  status('Building the volume…');
  const volumeId = `cornerstoneStreamingImageVolume:${series.uid}`;
  const volume = await volumeLoader.createAndCacheVolume(volumeId, { imageIds: loaded.imageIds });
  volume.load();
  await setVolumesForViewports(
    state.engine,
    [{ volumeId }],
    orientations.map(([name]) => name),
  );
  state.engine.render();
  status(`MPR of ${seriesLabel(series)}: axial, sagittal, coronal`);
}

function eachViewport(action) {
  if (!state.engine) return;
  for (const viewport of state.engine.getViewports()) {
    action(viewport);
    viewport.render();
  }
}

function applyPreset(name) {
  const preset = PRESETS[name];
  if (!preset) return;
  eachViewport((viewport) =>
    viewport.setProperties({
      voiRange: utilities.windowLevel.toLowHighRange(preset.width, preset.center),
    }),
  );
}

function rotate() {
  eachViewport((viewport) => {
    const presentation = viewport.getViewPresentation();
    viewport.setViewPresentation({ rotation: ((presentation.rotation || 0) + 90) % 360 });
  });
}

function flip(horizontal) {
  eachViewport((viewport) => {
    const camera = viewport.getCamera();
    viewport.flip(
      horizontal
        ? { flipHorizontal: !camera.flipHorizontal }
        : { flipVertical: !camera.flipVertical },
    );
  });
}

function invert() {
  eachViewport((viewport) => viewport.setProperties({ invert: !viewport.getProperties().invert }));
}

function reset() {
  eachViewport((viewport) => {
    viewport.resetProperties();
    viewport.resetCamera();
  });
}

function stopCine() {
  if (!state.cine || !state.engine) return;
  for (const viewport of state.engine.getViewports()) {
    toolUtilities.cine.stopClip(viewport.element);
  }
  state.cine = false;
  $('#cine').setAttribute('aria-pressed', 'false');
}

function toggleCine() {
  if (state.cine) {
    stopCine();
    return;
  }
  const viewport = state.engine && state.engine.getViewport('main');
  if (!viewport) return;
  toolUtilities.cine.playClip(viewport.element, { framesPerSecond: CINE_FPS, loop: true });
  state.cine = true;
  $('#cine').setAttribute('aria-pressed', 'true');
}

// The measurements list: length, angle, and ROI statistics (HU for CT), from the tools' stats.
function describe(annotation) {
  const stats = Object.values(annotation.data.cachedStats || {})[0];
  if (!stats) return null;
  const tool = annotation.metadata.toolName;
  if (tool === LengthTool.toolName && Number.isFinite(stats.length)) {
    return `Length ${fmt(stats.length, 1)} ${stats.unit || 'mm'}`;
  }
  if (tool === AngleTool.toolName && Number.isFinite(stats.angle)) {
    return `Angle ${fmt(stats.angle, 1)}°`;
  }
  if (Number.isFinite(stats.mean)) {
    const unit = stats.modalityUnit || '';
    const area = Number.isFinite(stats.area) ? ` · area ${fmt(stats.area, 1)} ${stats.areaUnit || ''}` : '';
    return `${tool === RectangleROITool.toolName ? 'Rectangle' : 'Ellipse'}: mean ${fmt(stats.mean, 1)} ${unit}, SD ${fmt(stats.stdDev, 1)} ${unit}${area}`;
  }
  return null;
}

function listMeasurements(event) {
  const { annotation } = event.detail;
  if (!annotation || !annotation.annotationUID) return;
  const text = describe(annotation);
  if (!text) return;
  const list = $('#measurements');
  let item = list.querySelector(`[data-uid="${annotation.annotationUID}"]`);
  if (!item) {
    item = document.createElement('li');
    item.dataset.uid = annotation.annotationUID;
    list.appendChild(item);
  }
  item.textContent = text;
  if (event.type === ToolEnums.Events.ANNOTATION_COMPLETED) item.dataset.complete = 'true';
}

function markSelected() {
  for (const item of document.querySelectorAll('[data-series]')) {
    item.setAttribute('aria-current', String(item.dataset.series === state.seriesUid));
  }
}

async function loadReport() {
  const region = $('#viewer-report');
  if (!config.reportUrl) return;
  try {
    const response = await fetch(config.reportUrl, { credentials: 'same-origin' });
    if (response.ok) region.querySelector('.report-body').innerHTML = await response.text();
  } catch (error) {
    region.querySelector('.report-body').textContent = `The report could not be loaded: ${error}`;
  }
}

function run(promise) {
  promise.catch((error) => {
    console.error(error);
    status(`Error: ${error.message || error}`);
  });
}

function wire() {
  for (const item of document.querySelectorAll('[data-series]')) {
    item.addEventListener('click', () => run(openStack(item.dataset.series)));
  }
  for (const button of document.querySelectorAll('[data-tool]')) {
    button.addEventListener('click', () => selectTool(button.dataset.tool));
  }
  for (const button of document.querySelectorAll('[data-prior]')) {
    const prior = config.priors.find((item) => item.uid === button.dataset.prior);
    button.addEventListener('click', () => run(openCompare(prior)));
  }
  $('#preset').addEventListener('change', (event) => {
    applyPreset(event.target.value);
    event.target.value = '';
  });
  $('#rotate').addEventListener('click', rotate);
  $('#flip-h').addEventListener('click', () => flip(true));
  $('#flip-v').addEventListener('click', () => flip(false));
  $('#invert').addEventListener('click', invert);
  $('#reset').addEventListener('click', reset);
  $('#cine').addEventListener('click', toggleCine);
  $('#mpr').addEventListener('click', () => run(openMpr()));
  $('#stack').addEventListener('click', () => run(openStack(state.seriesUid)));
  for (const name of [
    ToolEnums.Events.ANNOTATION_COMPLETED,
    ToolEnums.Events.ANNOTATION_MODIFIED,
  ]) {
    eventTarget.addEventListener(name, listMeasurements);
  }
  window.addEventListener('resize', () => state.engine && state.engine.resize(true, true));
}

async function start() {
  if (config.series.length) {
    firstImageOf(config.series[0].uid); // while Cornerstone starts
  }
  await coreInit();
  dicomImageLoader.init({
    maxWebWorkers: Math.max(1, Math.min(2, navigator.hardwareConcurrency || 1)),
    wasmBasePath: config.wasmBase,
  });
  imageLoader.registerImageLoader(RENDERED_SCHEME, loadRenderedImage);
  volumeLoader.registerVolumeLoader(
    'cornerstoneStreamingImageVolume',
    cornerstoneStreamingImageVolumeLoader,
  );
  volumeLoader.registerUnknownVolumeLoader(cornerstoneStreamingImageVolumeLoader);
  toolsInit();
  for (const tool of [
    WindowLevelTool,
    PanTool,
    ZoomTool,
    PlanarRotateTool,
    StackScrollTool,
    LengthTool,
    AngleTool,
    RectangleROITool,
    EllipticalROITool,
  ]) {
    addTool(tool);
  }
  wire();
  selectTool(WindowLevelTool.toolName);
  run(loadReport());
  document.body.dataset.renderer = getShouldUseCPURendering() ? 'cpu' : 'webgl';
  if (!config.series.length) {
    status('This study has no images to show.');
    return;
  }
  await openStack(config.series[0].uid);
}

window.rispacsViewer = { state, getRenderingEngine, personName };
run(start());
