// Impressions and a custom event through the SDK: they must land in the proxy's event store.
//
// env: EDGE_API_URL, PROJECT_UID, SDK_OPTIONS (JSON init options, with a userId), EVENT_KEY (default purchase),
//      EXTRA_ALIASES (JSON list of aliases for triggerImpressions({aliases}), default [])
// out: {ok, init: <snapshot>, impressionCalls: [...], eventKey}
//
// The calls: triggerImpression(first experience with an active variant); triggerImpressions({experienceShortUids:
// every other experience of the manifest, active or not: the SDK drops those without a variant});
// triggerImpressions({aliases: EXTRA_ALIASES}) when given; triggerEvent(EVENT_KEY).

import { configuredSdk, env, initAndSnapshot, jsonEnv, main } from './lib.mjs';

await main(async () => {
  configuredSdk();
  const projectUid = env('PROJECT_UID');
  const spec = jsonEnv('SDK_OPTIONS');
  const eventKey = env('EVENT_KEY', 'purchase');
  const extraAliases = jsonEnv('EXTRA_ALIASES', []);
  const { sdk, result: init } = await initAndSnapshot(projectUid, spec);
  const experiences = sdk.getExperiences();
  const firstActive = experiences.find((e) => e.activeVariantShortUid !== null);
  if (!firstActive) throw new Error('the manifest has no active variant: choose a visitor with at least one');
  const others = experiences.filter((e) => e !== firstActive).map((e) => e.shortUid);
  const impressionCalls = [];
  await sdk.triggerImpression(firstActive.shortUid);
  impressionCalls.push({ triggerImpression: firstActive.shortUid });
  await sdk.triggerImpressions({ experienceShortUids: others });
  impressionCalls.push({ triggerImpressions: { experienceShortUids: others } });
  if (extraAliases.length) {
    await sdk.triggerImpressions({ aliases: extraAliases });
    impressionCalls.push({ triggerImpressions: { aliases: extraAliases } });
  }
  await sdk.triggerEvent(eventKey);
  return { init, impressionCalls, eventKey };
});
