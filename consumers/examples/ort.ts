// Feeds a kvstream fixture to an onnxruntime-node session and compares with the stored output.
import * as ort from 'onnxruntime-node';
import { loadFixture, toOrtFeeds } from '../../src/index.ts';

/**
 * Runs `session` (input `x` [B,T,d_model], output `y` [B,T,d_out]) on case `name` of the fixture
 * folder `dir`. Returns y, the stored output, the largest |y - output| and the case's tolerance.
 */
export async function runFixture(session: ort.InferenceSession, dir: string, name: string) {
  const { entry, arrays } = await loadFixture(dir, name); // sha256, shapes and dtypes checked
  const feeds = toOrtFeeds(ort.Tensor, arrays, { x: 'x_q' }); // float32 tensor, dims [B,T,d_model]
  const { y } = await session.run(feeds);
  const want = arrays.get('output')!.data;
  const got = y.data as Float32Array;
  let maxDiff = 0;
  for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - want[i]));
  return { y: got, dims: y.dims, output: want, maxDiff, tolerance: entry.tolerance };
}
