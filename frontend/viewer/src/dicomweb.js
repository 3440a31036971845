// Reading our DICOMweb (same origin, session cookie): series metadata to Cornerstone image ids.
import dicomImageLoader from '@cornerstonejs/dicom-image-loader';
import { RENDERED_PHOTOMETRICS, SCHEME } from './renderedLoader.js';

const value = (item, tag) => {
  const element = item[tag];
  return element && element.Value ? element.Value : undefined;
};
export const first = (item, tag) => (value(item, tag) || [])[0];

export function personName(item, tag) {
  const name = first(item, tag);
  if (!name) return '';
  const text = typeof name === 'string' ? name : name.Alphabetic || '';
  return text.split('^').filter(Boolean).join(' ');
}

async function getJson(url) {
  const response = await fetch(url, {
    credentials: 'same-origin',
    headers: { Accept: 'application/dicom+json' },
  });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// Order by the position along the slice normal when the geometry is known, else by number.
function sortInstances(instances) {
  const orientation = value(instances[0], '00200037');
  const positioned = instances.every((item) => value(item, '00200032'));
  if (orientation && positioned && orientation.length === 6) {
    const [a, b, c, d, e, f] = orientation.map(Number);
    const normal = [b * f - c * e, c * d - a * f, a * e - b * d];
    const along = (item) => value(item, '00200032').reduce((sum, v, i) => sum + v * normal[i], 0);
    return instances.sort((x, y) => along(x) - along(y));
  }
  return instances.sort((x, y) => (first(x, '00200013') || 0) - (first(y, '00200013') || 0));
}

// The series' first image by instance number, fast: the index (QIDO-RS) names it, and only
// its own metadata is read, so that it shows before the whole series' metadata arrives.
export async function loadFirstImage(root, studyUid, seriesUid) {
  const base = `${root}/studies/${studyUid}/series/${seriesUid}`;
  const listed = (await getJson(`${base}/instances`)).filter((item) => first(item, '00280010'));
  if (!listed.length) return null;
  listed.sort((x, y) => (first(x, '00200013') || 0) - (first(y, '00200013') || 0));
  const sop = first(listed[0], '00080018');
  const [item] = await getJson(`${base}/instances/${sop}/metadata`);
  return registered(base, [item]);
}

// Fetch a series' metadata, register it with the WADO-RS loader; return image ids and metadata.
export async function loadSeries(root, studyUid, seriesUid) {
  const base = `${root}/studies/${studyUid}/series/${seriesUid}`;
  const instances = sortInstances(
    (await getJson(`${base}/metadata`)).filter((item) => value(item, '00280010')),
  );
  return registered(base, instances);
}

// Register INSTANCES with the WADO-RS loader; return their image ids and what the page needs.
function registered(base, instances) {
  const imageIds = [];
  const byImageId = new Map();
  for (const item of instances) {
    const sop = first(item, '00080018');
    const frames = Number(first(item, '00280008') || 1);
    const scheme = RENDERED_PHOTOMETRICS.has(first(item, '00280004')) ? SCHEME : 'wadors';
    for (let frame = 1; frame <= frames; frame += 1) {
      const imageId = `${scheme}:${window.location.origin}${base}/instances/${sop}/frames/${frame}`;
      // The WADO-RS metadata provider finds it by the URL after the scheme, for both loaders.
      dicomImageLoader.wadors.metaDataManager.add(imageId, item);
      imageIds.push(imageId);
      byImageId.set(imageId, { item, frame, frames });
    }
  }
  const head = instances[0] || {};
  return {
    imageIds,
    byImageId,
    modality: first(head, '00080060') || '',
    multiFrame: instances.some((item) => Number(first(item, '00280008') || 1) > 1),
    volumeReady:
      instances.length >= 3 &&
      instances.every((item) => value(item, '00200032') && value(item, '00200037')) &&
      ['CT', 'MR', 'PT', 'NM'].includes(first(head, '00080060')),
  };
}
