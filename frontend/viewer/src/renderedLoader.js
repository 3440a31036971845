// A fallback image loader: the server's WADO-RS rendered PNG of a frame, as an RGB image.
// Used for colour images whose colour space the server may have converted while
// decompressing (YBR of JPEG and JPEG 2000; palette colour), which the WADO-RS frames
// loader would convert a second time.
import { utilities } from '@cornerstonejs/core';

export const SCHEME = 'rendered';

// Photometric interpretations shown through the rendered resource.
export const RENDERED_PHOTOMETRICS = new Set([
  'YBR_FULL',
  'YBR_FULL_422',
  'YBR_PARTIAL_420',
  'YBR_ICT',
  'YBR_RCT',
  'PALETTE COLOR',
]);

async function fetchImage(imageId, frameUrl) {
  const response = await fetch(`${frameUrl}/rendered`, {
    credentials: 'same-origin',
    headers: { Accept: 'image/png' },
  });
  if (!response.ok) throw new Error(`${frameUrl}/rendered: ${response.status}`);
  const bitmap = await createImageBitmap(await response.blob());
  const { width, height } = bitmap;
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return {
    imageId,
    minPixelValue: 0,
    maxPixelValue: 255,
    slope: 1,
    intercept: 0,
    windowCenter: 128,
    windowWidth: 256,
    voiLUTFunction: 'LINEAR',
    getPixelData: () => rgb,
    getCanvas: () => canvas,
    rows: height,
    columns: width,
    height,
    width,
    color: true,
    rgba: false,
    numberOfComponents: 3,
    columnPixelSpacing: 1,
    rowPixelSpacing: 1,
    invert: false,
    photometricInterpretation: 'RGB',
    sizeInBytes: rgb.byteLength,
    dataType: 'Uint8Array',
    voxelManager: utilities.VoxelManager.createImageVoxelManager({
      width,
      height,
      scalarData: rgb,
      numberOfComponents: 3,
    }),
  };
}

// imageId: rendered:<absolute URL of the frame>; the metadata is the WADO-RS one of that URL.
export function loadRenderedImage(imageId) {
  const frameUrl = imageId.slice(SCHEME.length + 1);
  return { promise: fetchImage(imageId, frameUrl) };
}
