// A visitor's writes through the SDK, step by step, with every write request recorded as the SDK sent it (method,
// path, headers, BODY) and the status the proxy answered: the oracle of what a forwarding proxy must pass on.
//
// env: EDGE_API_URL, PROJECT_UID, STEPS (JSON list, run in order):
//        {"init": {<init options as SDK_OPTIONS>}}        Personalize.init; later steps use this instance
//        {"impression": true}                            triggerImpression(the first experience with a variant)
//        {"impressions": true}                           triggerImpressions({experienceShortUids: every other
//                                                        experience}) (the SDK drops those without a variant)
//        {"event": "key"}                                triggerEvent(key)
//        {"set": {...}}                                  set(attributes)
//        {"setUserId": "id", "preserve": true}           setUserId(id, {preserveUserAttributes}) (a merge)
// out: {ok, userIds: [getUserId() after each step], writes: [{method, path, requestHeaders, body, status}], http}
//      `writes`: every non-GET request, in the order the SDK made them; `body`: the text the SDK wrote.

import dc from 'node:diagnostics_channel';
import http from 'node:http';
import { configuredSdk, env, initOptions, jsonEnv, main } from './lib.mjs';

const writes = [];
const pending = new WeakMap();
const bodies = new WeakMap();

// The body as the SDK's fetch writes it (`http.client.request.start` is published once the request has ended, too
// late to watch it being written): every ClientRequest's write/end keeps its chunks.
const proto = http.ClientRequest.prototype;
const originalWrite = proto.write;
const originalEnd = proto.end;
function keep(request, chunk, encoding) {
  if (chunk === undefined || chunk === null || typeof chunk === 'function') return;
  const chunks = bodies.get(request) || [];
  chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8'));
  bodies.set(request, chunks);
}
proto.write = function write(chunk, encoding, callback) {
  keep(this, chunk, encoding);
  return originalWrite.call(this, chunk, encoding, callback);
};
proto.end = function end(chunk, encoding, callback) {
  keep(this, chunk, encoding);
  return originalEnd.call(this, chunk, encoding, callback);
};

dc.subscribe('http.client.request.start', ({ request }) => {
  if (request.method === 'GET' || request.method === 'OPTIONS') return;
  const entry = {
    method: request.method,
    path: request.path,
    requestHeaders: Object.fromEntries(
      Object.entries(request.getHeaders()).map(([name, value]) => [name, Array.isArray(value) ? value.join(', ') : String(value)]),
    ),
    body: Buffer.concat(bodies.get(request) || []).toString('utf8'),
    status: null,
  };
  pending.set(request, entry);
  writes.push(entry);
});

dc.subscribe('http.client.response.finish', ({ request, response }) => {
  const entry = pending.get(request);
  if (entry) entry.status = response.statusCode;
});

await main(async () => {
  const Personalize = configuredSdk();
  const projectUid = env('PROJECT_UID');
  const steps = jsonEnv('STEPS');
  let sdk = null;
  const userIds = [];
  const need = () => {
    if (!sdk) throw new Error('the first step must be init');
    return sdk;
  };
  for (const step of steps) {
    if (step.init) {
      sdk = await Personalize.init(projectUid, initOptions(step.init));
    } else if (step.impression) {
      const first = need().getExperiences().find((e) => e.activeVariantShortUid !== null);
      if (!first) throw new Error('the manifest has no active variant: choose a visitor with at least one');
      await sdk.triggerImpression(first.shortUid);
    } else if (step.impressions) {
      const all = need().getExperiences();
      const first = all.find((e) => e.activeVariantShortUid !== null);
      await sdk.triggerImpressions({ experienceShortUids: all.filter((e) => e !== first).map((e) => e.shortUid) });
    } else if (step.event) {
      await need().triggerEvent(step.event);
    } else if (step.set) {
      await need().set(step.set);
    } else if (step.setUserId) {
      await need().setUserId(step.setUserId, { preserveUserAttributes: Boolean(step.preserve) });
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
    userIds.push(sdk.getUserId() ?? null);
  }
  return { userIds, writes };
});
