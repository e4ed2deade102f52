// `sdk.addStateToResponse(response)` in an edge function, then the browser's next request carries the cookies.
//
// env: EDGE_API_URL, PROJECT_UID, REQUEST (JSON {url, headers}: the first request, without our cookies)
// out: {ok, first: <snapshot>, setCookies: [raw Set-Cookie values], cookies: [{name, value, raw}],
//       cookieHeader, second: <snapshot of init({request: same request + Cookie: cookieHeader})>}

import { configuredSdk, env, initAndSnapshot, jsonEnv, main, parseSetCookie } from './lib.mjs';

await main(async () => {
  configuredSdk();
  const projectUid = env('PROJECT_UID');
  const request = jsonEnv('REQUEST');
  const { sdk, result: first } = await initAndSnapshot(projectUid, { request });
  const response = new Response('<!doctype html><title>edge function</title>', { headers: { 'Content-Type': 'text/html' } });
  sdk.addStateToResponse(response);
  const setCookies = response.headers.getSetCookie();
  const cookies = setCookies.map(parseSetCookie);
  const cookieHeader = cookies.map((c) => `${c.name}=${c.value}`).join('; ');
  const headers = { ...request.headers, Cookie: cookieHeader };
  const { result: second } = await initAndSnapshot(projectUid, { request: { url: request.url, headers } });
  return { first, setCookies, cookies, cookieHeader, second };
});
