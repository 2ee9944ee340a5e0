import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import { basicAuthUser } from './auth.js';
import type { AgentState } from './state.js';
import { lookupUser, type UserInfo } from './users.js';

/**
 * The user an RPC acts as: the Basic-auth user (unknown → unauthenticated "invalid username"),
 * else the sandbox default user.
 */
export function rpcUser(ctx: HandlerContext, state: AgentState): UserInfo {
  const named = basicAuthUser(ctx.requestHeader.get('authorization'));
  if (named !== undefined) {
    const u = lookupUser(named);
    if (!u) throw new ConnectError(`invalid username: '${named}'`, Code.Unauthenticated);
    return u;
  }
  const u = lookupUser(state.defaultUser);
  if (!u) throw new ConnectError(`invalid default user: '${state.defaultUser}'`, Code.Unauthenticated);
  return u;
}
