// One `Personalize.init(PROJECT_UID, options)` against the proxy; prints what the SDK instance reports.
//
// env: EDGE_API_URL, PROJECT_UID, SDK_OPTIONS (JSON: {userId?, tags?, liveAttributes?, request?: {url, headers}})
// out: {ok, rejected: false, init: {startedAt, userId, aliases, variantParam, experiences, variants, http}}
//      or, when init rejects (e.g. an unknown project): {ok, rejected: true, error, initializationStatus}

import { configuredSdk, env, initAndSnapshot, jsonEnv, main } from './lib.mjs';

await main(async () => {
  const Personalize = configuredSdk();
  const projectUid = env('PROJECT_UID');
  const spec = jsonEnv('SDK_OPTIONS', {});
  try {
    const { result } = await initAndSnapshot(projectUid, spec);
    return { rejected: false, init: result };
  } catch (error) {
    return {
      rejected: true,
      error: String(error && error.message ? error.message : error),
      initializationStatus: Personalize.getInitializationStatus() ?? null,
    };
  }
});
