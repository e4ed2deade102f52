// `sdk.set(attributes)` then a new `init` for the same user: the stored attributes must now decide.
//
// env: EDGE_API_URL, PROJECT_UID, USER_ID, ATTRIBUTES (JSON object), SDK_OPTIONS (JSON, optional extra init options)
// out: {ok, before: <snapshot>, set: {http}, after: <snapshot>}

import { configuredSdk, env, initAndSnapshot, jsonEnv, main } from './lib.mjs';

await main(async () => {
  configuredSdk();
  const projectUid = env('PROJECT_UID');
  const spec = { ...jsonEnv('SDK_OPTIONS', {}), userId: env('USER_ID') };
  const attributes = jsonEnv('ATTRIBUTES');
  const { sdk, result: before } = await initAndSnapshot(projectUid, spec);
  await sdk.set(attributes);
  const { result: after } = await initAndSnapshot(projectUid, spec);
  return { before, after };
});
