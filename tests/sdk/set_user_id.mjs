// `sdk.setUserId(newId, {preserveUserAttributes: true})` merges the old user's attributes into the new one.
//
// env: EDGE_API_URL, PROJECT_UID, OLD_USER_ID, NEW_USER_ID, CONTROL_USER_ID, ATTRIBUTES (JSON object: set on the
//      old user), TARGET_ATTRIBUTES (optional JSON object: set on the new user first, to see which values win)
// out: {ok, old: <snapshot of init(OLD)>, userIdAfterSetUserId, newUser: <snapshot of init(NEW) after the merge>,
//       oldUser: <snapshot of init(OLD) after the merge>, control: <snapshot of init(CONTROL)>}

import { configuredSdk, env, initAndSnapshot, jsonEnv, main } from './lib.mjs';

await main(async () => {
  configuredSdk();
  const projectUid = env('PROJECT_UID');
  const oldId = env('OLD_USER_ID');
  const newId = env('NEW_USER_ID');
  const controlId = env('CONTROL_USER_ID');
  const targetAttributes = jsonEnv('TARGET_ATTRIBUTES', null);
  if (targetAttributes) {
    const { sdk: target } = await initAndSnapshot(projectUid, { userId: newId });
    await target.set(targetAttributes);
  }
  const { sdk, result: old } = await initAndSnapshot(projectUid, { userId: oldId });
  await sdk.set(jsonEnv('ATTRIBUTES'));
  await sdk.setUserId(newId, { preserveUserAttributes: true });
  const userIdAfterSetUserId = sdk.getUserId();
  const { result: newUser } = await initAndSnapshot(projectUid, { userId: newId });
  const { result: oldUser } = await initAndSnapshot(projectUid, { userId: oldId });
  const { result: control } = await initAndSnapshot(projectUid, { userId: controlId });
  return { old, userIdAfterSetUserId, newUser, oldUser, control };
});
