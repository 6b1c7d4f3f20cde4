// Renders bench/results.json as the Markdown table the README quotes: tsx bench/table.ts
import { readFileSync } from 'node:fs';

interface Row { workload: string; mask: string; threads: number; system: string; variant?: string; median_ms: number; gflops: number | null; [k: string]: unknown }
const { machine, limits, rows } = JSON.parse(readFileSync('bench/results.json', 'utf8')) as { machine: Record<string, unknown>; limits: Record<string, number>; rows: Row[] };

const fmt = (ms: number, workload: string) =>
  workload === 'W4' ? `${(ms * 1000).toFixed(1)} µs` : workload.startsWith('W3') || workload === 'W6' ? `${ms.toFixed(2)} ms/step` : workload === 'W5' ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;

console.log(`Machine: ${machine.cpu}, ${machine.cores} cores, Node ${machine.node}, ${machine.blas} (${machine.blasCore}), onnxruntime-node ${machine.onnxruntime}, torch ${machine.torch ?? 'absent'}. sgemm through the addon (2048³): ${Object.entries(limits).map(([t, g]) => `${g.toFixed(0)} GFLOP/s at ${t} thread${t === '1' ? '' : 's'}`).join(', ')}.\n`);
console.log('| workload | mask | threads | kvstream | onnxruntime | torch | kvstream / ORT | kvstream / torch | kvstream GFLOP/s (of sgemm) |');
console.log('|---|---|---|---|---|---|---|---|---|');
// One line per workload, mask, thread count, cache dtype and feature (rows without them: fp32, none).
const keyOf = (r: Row) => `${r.workload}|${r.mask}|${r.threads}|${r.cache ?? ''}|${r.feature ?? ''}`;
const keys = [...new Set(rows.map(keyOf))];
for (const key of keys) {
  const [workload, mask, threads, cache, feature] = key.split('|');
  const group = rows.filter((r) => keyOf(r) === key);
  const ours = group.find((r) => r.system === 'kvstream' && !r.variant);
  if (!ours) continue;
  const peer = (s: string) => group.find((r) => r.system === s);
  const ort = peer('onnxruntime'), torch = peer('torch');
  const rx = group.find((r) => r.variant === 'rxjs');
  const kernel = group.find((r) => r.variant === 'kernel');
  const fresh = group.find((r) => r.variant === 'fresh');
  const limit = limits[threads];
  let ourCell = fmt(ours.median_ms, workload);
  const extra = [kernel && `kernel ${fmt(kernel.median_ms, workload)}`, fresh && `fresh outputs ${fmt(fresh.median_ms, workload)}`, rx && `RxJS path ${fmt(rx.median_ms, workload)}`].filter(Boolean);
  const x = (k: string) => ours[k] as number | undefined;
  if (x('ratio_to_fp32') !== undefined) extra.push(`${x('ratio_to_fp32')!.toFixed(2)}× fp32`);
  if (x('of_floor') !== undefined) extra.push(`${x('gbps')!.toFixed(1)} GB/s, ${x('of_floor')!.toFixed(2)}× the plain read's ${fmt(x('floor_ms')!, workload)}`);
  if (x('ratio_to_W3_b1') !== undefined) extra.push(`${x('ratio_to_W3_b1')!.toFixed(2)}× W3-b1`);
  if (x('ratio_to_W2') !== undefined) extra.push(`${x('ratio_to_W2')!.toFixed(2)}× W2 without rope`);
  if (extra.length) ourCell += ` (${extra.join('; ')})`;
  if (workload === 'W5') ourCell += `: ${(ours.throughput_mib_s as number).toFixed(0)} MiB/s, ${(100 * (ours.throughput_mib_s as number) / (ours.raw_read_mib_s as number)).toFixed(0)}% of the raw read's ${(ours.raw_read_mib_s as number).toFixed(0)} MiB/s, peak RSS ${(ours.peak_rss_mib as number).toFixed(0)} MiB`;
  const ratio = (p?: Row) => (p ? `${(ours.median_ms / p.median_ms).toFixed(2)}×` : '—');
  const gf = ours.gflops !== null ? `${ours.gflops.toFixed(0)}${workload.startsWith('W1') ? ` (${((100 * ours.gflops) / limit).toFixed(0)}%)` : ''}` : '—';
  const what = [cache && cache !== 'fp32' ? `${cache} cache` : '', feature === 'window' ? `window ${ours.window} over ${ours.stream}` : feature === 'paged' ? `paged (${ours.pageSize})` : feature].filter(Boolean).join(', ');
  console.log(`| ${workload}${what ? ` ${what}` : ''} | ${mask} | ${threads} | ${ourCell} | ${ort ? fmt(ort.median_ms, workload) : '—'} | ${torch ? fmt(torch.median_ms, workload) : '—'} | ${ratio(ort)} | ${ratio(torch)} | ${gf} |`);
}
