//! The C ABI: `C_GetFunctionList` and every `C_*` entry point of PKCS#11 v2.40.
//!
//! Each function checks its pointers (`CKR_ARGUMENTS_BAD` for a null where a value is needed),
//! follows the two-call convention for output buffers (`CKR_BUFFER_TOO_SMALL` with the needed
//! length), and runs inside `catch_unwind`: a bug answers `CKR_GENERAL_ERROR`, never a crash.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki_sys::*;

use crate::config::Config;
use crate::mechanism::Mech;
use crate::token::{Inner, OpKind, R, SLOT_ID, Session, Template, Token, pad};

// Held only to take a reference to the token: nothing else waits on it.
static STATE: Mutex<Option<Arc<Token>>> = Mutex::new(None);

/// Largest attribute value or data buffer accepted (a guard against absurd lengths).
const MAX_INPUT: CK_ULONG = 64 * 1024 * 1024;

fn run(f: impl FnOnce() -> R<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

fn state() -> R<MutexGuard<'static, Option<Arc<Token>>>> {
    STATE.lock().map_err(|_| CKR_GENERAL_ERROR)
}

/// The token, for calls that may block (PIN hashing, key generation, file I/O): they take its
/// in-memory lock only for the in-memory parts.
fn token() -> R<Arc<Token>> {
    state()?.as_ref().cloned().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)
}

/// `CKR_CRYPTOKI_NOT_INITIALIZED` before anything else (argument checks included), as PKCS#11
/// wants and conformance suites check.
fn live() -> R<()> {
    token().map(|_| ())
}

/// In-memory work under the token's lock.
fn with_token<T>(f: impl FnOnce(&mut Inner) -> R<T>) -> R<T> {
    let token = token()?;
    let mut inner = token.lock()?;
    f(&mut inner)
}

fn slot(id: CK_SLOT_ID) -> R<()> {
    if id == SLOT_ID { Ok(()) } else { Err(CKR_SLOT_ID_INVALID) }
}

unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> R<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() || len > MAX_INPUT {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> R<Template> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() || n > 4096 {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    attrs.iter().map(|a| Ok((a.type_, unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?.to_vec()))).collect()
}

unsafe fn mechanism(p: *const CK_MECHANISM) -> R<(CK_MECHANISM_TYPE, Vec<u8>)> {
    let m = unsafe { p.as_ref() }.ok_or(CKR_ARGUMENTS_BAD)?;
    Ok((m.mechanism, unsafe { bytes(m.pParameter as *const u8, m.ulParameterLen) }?.to_vec()))
}

/// The two-call convention: `out == NULL` asks for the length.
unsafe fn write_out(out: *mut u8, out_len: *mut CK_ULONG, data: &[u8]) -> R<()> {
    let len = unsafe { out_len.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)?;
    let need = data.len() as CK_ULONG;
    if out.is_null() {
        *len = need;
        return Ok(());
    }
    if *len < need {
        *len = need;
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
    *len = need;
    Ok(())
}

/// For outputs computed only when the buffer is big enough (signatures): `Ok(true)` = go ahead.
unsafe fn output_ready(out: *mut u8, out_len: *mut CK_ULONG, need: usize) -> R<bool> {
    let len = unsafe { out_len.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)?;
    if out.is_null() {
        *len = need as CK_ULONG;
        return Ok(false);
    }
    if (*len as usize) < need {
        *len = need as CK_ULONG;
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    Ok(true)
}

unsafe fn set<T>(p: *mut T, v: T) -> R<()> {
    let r = unsafe { p.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)?;
    *r = v;
    Ok(())
}

fn session(h: CK_SESSION_HANDLE) -> R<std::sync::Arc<Mutex<Session>>> {
    with_token(|t| t.session(h))
}

// ---- general ----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Initialize(args: CK_VOID_PTR) -> CK_RV {
    run(|| {
        if let Some(a) = unsafe { (args as *const CK_C_INITIALIZE_ARGS).as_ref() } {
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let fns =
                [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            if fns.iter().any(|f| *f) && !fns.iter().all(|f| *f) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            if fns[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
        }
        let mut guard = state()?;
        if guard.is_some() {
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // The module has no other channel to tell an operator why it will not start.
        let token = Config::from_env()
            .and_then(|(cfg, note)| {
                if let Some(note) = note {
                    eprintln!("{note}");
                }
                Token::open(cfg).map(Arc::new)
            })
            .map_err(|msg| {
                eprintln!("{msg}");
                CKR_GENERAL_ERROR
            })?;
        *guard = Some(token);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Finalize(reserved: CK_VOID_PTR) -> CK_RV {
    run(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let mut guard = state()?;
        guard.take().map(|_| ()).ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    run(|| {
        live()?;
        unsafe {
            set(
                info,
                CK_INFO {
                    cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
                    manufacturerID: pad("HSCA"),
                    flags: 0,
                    libraryDescription: pad("softtoken SM2/SM3/SM4 PKCS#11"),
                    libraryVersion: CK_VERSION { major: 0, minor: 1 },
                },
            )
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    run(|| unsafe { set(pp, &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST) })
}

// ---- slots and tokens -------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotList(_present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        let n = unsafe { count.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)?;
        if list.is_null() {
            *n = 1;
            return Ok(());
        }
        if *n < 1 {
            *n = 1;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        unsafe { *list = SLOT_ID };
        *n = 1;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotInfo(id: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    run(|| {
        live()?;
        let i = with_token(|t| Ok(t.slot_info()))?;
        slot(id)?;
        unsafe { set(info, i) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetTokenInfo(id: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    run(|| {
        live()?;
        let i = with_token(|t| Ok(t.token_info()))?;
        slot(id)?;
        unsafe { set(info, i) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismList(
    id: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        slot(id)?;
        let codes = Mech::all_codes();
        let n = unsafe { count.as_mut() }.ok_or(CKR_ARGUMENTS_BAD)?;
        let need = codes.len() as CK_ULONG;
        if list.is_null() {
            *n = need;
            return Ok(());
        }
        if *n < need {
            *n = need;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        unsafe { std::ptr::copy_nonoverlapping(codes.as_ptr(), list, codes.len()) };
        *n = need;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismInfo(
    id: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    run(|| {
        live()?;
        slot(id)?;
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let m = Mech::from_code(ty).ok_or(CKR_MECHANISM_INVALID)?;
        unsafe { set(info, m.info()) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_InitToken(id: CK_SLOT_ID, pin: *mut u8, pin_len: CK_ULONG, label: *mut u8) -> CK_RV {
    run(|| {
        live()?;
        let pin = unsafe { bytes(pin, pin_len) }?;
        if label.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let label = unsafe { std::slice::from_raw_parts(label, 32) };
        let label = String::from_utf8_lossy(label).trim_end().to_owned();
        let token = token()?;
        slot(id)?;
        token.init_token(pin, &label)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_InitPIN(h: CK_SESSION_HANDLE, pin: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        let pin = unsafe { bytes(pin, len) }?;
        token()?.init_pin(h, pin)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetPIN(
    h: CK_SESSION_HANDLE,
    old: *mut u8,
    old_len: CK_ULONG,
    new: *mut u8,
    new_len: CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        let (old, new) = unsafe { (bytes(old, old_len)?, bytes(new, new_len)?) };
        token()?.set_pin(h, old, new)
    })
}

// ---- sessions ---------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_OpenSession(
    id: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: CK_VOID_PTR,
    _notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    run(|| {
        live()?;
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let h = with_token(|t| {
            slot(id)?;
            t.open_session(flags)
        })?;
        unsafe { set(out, h) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    run(|| with_token(|t| t.close_session(h)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseAllSessions(id: CK_SLOT_ID) -> CK_RV {
    run(|| {
        live()?;
        with_token(|t| {
            slot(id)?;
            t.close_all();
            Ok(())
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSessionInfo(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    run(|| {
        live()?;
        let i = with_token(|t| t.session_info(h))?;
        unsafe { set(info, i) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        let pin = unsafe { bytes(pin, len) }?;
        token()?.login(h, user, pin)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    run(|| with_token(|t| t.logout(h)))
}

// ---- objects ----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    run(|| {
        live()?;
        let tpl = unsafe { template(t, n) }?;
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let o = token()?.create_object(h, &tpl)?;
        unsafe { set(out, o) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    run(|| token()?.destroy_object(h, o))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        if n > 0 && t.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        with_token(|tk| {
            let obj = tk.object(h, o)?;
            let attrs = if n == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(t, n as usize) } };
            let mut rv = CKR_OK;
            for a in attrs {
                let value = match a.type_ {
                    CKA_TOKEN if !obj.attrs.contains_key(&CKA_TOKEN) => Some(vec![u8::from(obj.is_token())]),
                    CKA_PRIVATE if !obj.attrs.contains_key(&CKA_PRIVATE) => Some(vec![u8::from(obj.is_private())]),
                    ty => obj.attrs.get(&ty).cloned(),
                };
                if !obj.is_readable(a.type_) {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    rv = CKR_ATTRIBUTE_SENSITIVE;
                    continue;
                }
                let Some(v) = value else {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    if rv != CKR_ATTRIBUTE_SENSITIVE {
                        rv = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                    continue;
                };
                if a.pValue.is_null() {
                    a.ulValueLen = v.len() as CK_ULONG;
                } else if (a.ulValueLen as usize) < v.len() {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    if rv == CKR_OK {
                        rv = CKR_BUFFER_TOO_SMALL;
                    }
                } else {
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len()) };
                    a.ulValueLen = v.len() as CK_ULONG;
                }
            }
            if rv == CKR_OK { Ok(()) } else { Err(rv) }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        let tpl = unsafe { template(t, n) }?;
        token()?.set_attributes(h, o, &tpl)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsInit(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        let tpl = unsafe { template(t, n) }?;
        let token = token()?;
        token.refresh()?;
        token.lock()?.find_init(h, &tpl)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        if count.is_null() || (out.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let s = session(h)?;
        let found = s.lock().map_err(|_| CKR_GENERAL_ERROR)?.find_next(max.min(MAX_INPUT) as usize)?;
        if !found.is_empty() {
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), out, found.len()) };
        }
        unsafe { set(count, found.len() as CK_ULONG) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    run(|| session(h)?.lock().map_err(|_| CKR_GENERAL_ERROR)?.find_final())
}

// ---- sign and verify --------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        with_token(|t| t.sign_init(h, code, &param, key, false))
    })
}

/// Runs `f` on session `h`'s state; an error other than `CKR_BUFFER_TOO_SMALL` ends operation
/// `kind` (PKCS#11 v2.40 §5.2), so a failed call never leaves a half-used operation behind.
fn in_op<T>(h: CK_SESSION_HANDLE, kind: OpKind, f: impl FnOnce(&mut Session) -> R<T>) -> R<T> {
    let s = session(h)?;
    let mut s = s.lock().map_err(|_| CKR_GENERAL_ERROR)?;
    let r = f(&mut s);
    if matches!(r, Err(rv) if rv != CKR_BUFFER_TOO_SMALL) {
        s.end(kind);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    data: *mut u8,
    len: CK_ULONG,
    sig: *mut u8,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Sign, |s| {
            let data = unsafe { bytes(data, len) }?;
            let need = s.sign_len()?;
            s.check_single(OpKind::Sign)?;
            if !unsafe { output_ready(sig, sig_len, need) }? {
                return Ok(());
            }
            s.sign_update(data, false)?;
            let out = s.sign_finish()?;
            unsafe { write_out(sig, sig_len, &out) }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignUpdate(h: CK_SESSION_HANDLE, data: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Sign, |s| {
            let data = unsafe { bytes(data, len) }?;
            s.sign_update(data, false)?;
            s.mark_multi(OpKind::Sign);
            Ok(())
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignFinal(h: CK_SESSION_HANDLE, sig: *mut u8, sig_len: *mut CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Sign, |s| {
            let need = s.sign_len()?;
            if !unsafe { output_ready(sig, sig_len, need) }? {
                return Ok(());
            }
            let out = s.sign_finish()?;
            unsafe { write_out(sig, sig_len, &out) }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        with_token(|t| t.sign_init(h, code, &param, key, true))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    data: *mut u8,
    len: CK_ULONG,
    sig: *mut u8,
    sig_len: CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Verify, |s| {
            let (data, sig) = unsafe { (bytes(data, len)?, bytes(sig, sig_len)?) };
            s.check_single(OpKind::Verify)?;
            s.sign_update(data, true)?;
            s.verify_finish(sig)
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyUpdate(h: CK_SESSION_HANDLE, data: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Verify, |s| {
            let data = unsafe { bytes(data, len) }?;
            s.sign_update(data, true)?;
            s.mark_multi(OpKind::Verify);
            Ok(())
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyFinal(h: CK_SESSION_HANDLE, sig: *mut u8, sig_len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Verify, |s| {
            let sig = unsafe { bytes(sig, sig_len) }?;
            s.verify_finish(sig)
        })
    })
}

// ---- digest -----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        session(h)?.lock().map_err(|_| CKR_GENERAL_ERROR)?.digest_init(code, &param)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    data: *mut u8,
    len: CK_ULONG,
    out: *mut u8,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Digest, |s| {
            let data = unsafe { bytes(data, len) }?;
            if !s.digest_active() {
                return Err(CKR_OPERATION_NOT_INITIALIZED);
            }
            s.check_single(OpKind::Digest)?;
            if !unsafe { output_ready(out, out_len, 32) }? {
                return Ok(());
            }
            s.digest_update(data)?;
            let d = s.digest_finish()?;
            unsafe { write_out(out, out_len, &d) }
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestUpdate(h: CK_SESSION_HANDLE, data: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Digest, |s| {
            let data = unsafe { bytes(data, len) }?;
            s.digest_update(data)?;
            s.mark_multi(OpKind::Digest);
            Ok(())
        })
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestFinal(h: CK_SESSION_HANDLE, out: *mut u8, out_len: *mut CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        in_op(h, OpKind::Digest, |s| {
            if !s.digest_active() {
                return Err(CKR_OPERATION_NOT_INITIALIZED);
            }
            if !unsafe { output_ready(out, out_len, 32) }? {
                return Ok(());
            }
            let d = s.digest_finish()?;
            unsafe { write_out(out, out_len, &d) }
        })
    })
}

// ---- encrypt and decrypt ----------------------------------------------------------------------

fn cipher_kind(encrypt: bool) -> OpKind {
    if encrypt { OpKind::Encrypt } else { OpKind::Decrypt }
}

unsafe fn cipher_init(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE, encrypt: bool) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        with_token(|t| t.cipher_init(h, code, &param, key, encrypt))
    })
}

/// `C_Encrypt`/`C_Decrypt` (`single`) or their `…Final` (no more input).
unsafe fn cipher_all(
    h: CK_SESSION_HANDLE,
    data: *mut u8,
    len: CK_ULONG,
    out: *mut u8,
    out_len: *mut CK_ULONG,
    encrypt: bool,
    single: bool,
) -> CK_RV {
    let kind = cipher_kind(encrypt);
    run(|| {
        live()?;
        in_op(h, kind, |s| {
            let data = unsafe { bytes(data, len) }?;
            let need = s.cipher_len(data.len(), encrypt)?;
            if single {
                s.check_single(kind)?;
            }
            if !unsafe { output_ready(out, out_len, need) }? {
                return Ok(());
            }
            s.cipher_update(data, encrypt)?;
            let result = s.cipher_finish(encrypt)?;
            unsafe { write_out(out, out_len, &result) }
        })
    })
}

unsafe fn cipher_update(
    h: CK_SESSION_HANDLE,
    data: *mut u8,
    len: CK_ULONG,
    out_len: *mut CK_ULONG,
    encrypt: bool,
) -> CK_RV {
    let kind = cipher_kind(encrypt);
    run(|| {
        live()?;
        in_op(h, kind, |s| {
            let data = unsafe { bytes(data, len) }?;
            if out_len.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            s.cipher_update(data, encrypt)?;
            s.mark_multi(kind);
            // Buffered: output comes at the final call.
            unsafe { set(out_len, 0) }
        })
    })
}

unsafe fn cipher_final(h: CK_SESSION_HANDLE, out: *mut u8, out_len: *mut CK_ULONG, encrypt: bool) -> CK_RV {
    unsafe { cipher_all(h, std::ptr::null_mut(), 0, out, out_len, encrypt, false) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    unsafe { cipher_init(h, m, key, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    d: *mut u8,
    l: CK_ULONG,
    o: *mut u8,
    ol: *mut CK_ULONG,
) -> CK_RV {
    unsafe { cipher_all(h, d, l, o, ol, true, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    d: *mut u8,
    l: CK_ULONG,
    _o: *mut u8,
    ol: *mut CK_ULONG,
) -> CK_RV {
    unsafe { cipher_update(h, d, l, ol, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptFinal(h: CK_SESSION_HANDLE, o: *mut u8, ol: *mut CK_ULONG) -> CK_RV {
    unsafe { cipher_final(h, o, ol, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    unsafe { cipher_init(h, m, key, false) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    d: *mut u8,
    l: CK_ULONG,
    o: *mut u8,
    ol: *mut CK_ULONG,
) -> CK_RV {
    unsafe { cipher_all(h, d, l, o, ol, false, true) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    d: *mut u8,
    l: CK_ULONG,
    _o: *mut u8,
    ol: *mut CK_ULONG,
) -> CK_RV {
    unsafe { cipher_update(h, d, l, ol, false) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptFinal(h: CK_SESSION_HANDLE, o: *mut u8, ol: *mut CK_ULONG) -> CK_RV {
    unsafe { cipher_final(h, o, ol, false) }
}

// ---- keys -------------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        let tpl = unsafe { template(t, n) }?;
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if !param.is_empty() {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let k = token()?.generate_key(h, code, &tpl)?;
        unsafe { set(out, k) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    pt: *mut CK_ATTRIBUTE,
    pn: CK_ULONG,
    st: *mut CK_ATTRIBUTE,
    sn: CK_ULONG,
    pub_out: *mut CK_OBJECT_HANDLE,
    priv_out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    run(|| {
        live()?;
        let (code, _param) = unsafe { mechanism(m) }?;
        let (public, private) = unsafe { (template(pt, pn)?, template(st, sn)?) };
        if pub_out.is_null() || priv_out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let (p, s) = token()?.generate_key_pair(h, code, &public, &private)?;
        unsafe {
            set(pub_out, p)?;
            set(priv_out, s)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_WrapKey(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: *mut u8,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        if out_len.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let wrapped = zeroize::Zeroizing::new(with_token(|t| t.wrap_key(h, code, &param, wrapping, key))?);
        unsafe { write_out(out, out_len, &wrapped) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: *mut u8,
    wrapped_len: CK_ULONG,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    run(|| {
        live()?;
        let (code, param) = unsafe { mechanism(m) }?;
        let wrapped = unsafe { bytes(wrapped, wrapped_len) }?;
        let tpl = unsafe { template(t, n) }?;
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let k = token()?.unwrap_key(h, code, &param, unwrapping, wrapped, &tpl)?;
        unsafe { set(out, k) }
    })
}

// ---- random -----------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateRandom(h: CK_SESSION_HANDLE, out: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        with_token(|t| t.session(h).map(|_| ()))?;
        if len == 0 {
            return Ok(());
        }
        if out.is_null() || len > MAX_INPUT {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let buf = unsafe { std::slice::from_raw_parts_mut(out, len as usize) };
        crate::crypto::random(buf).map_err(|_| CKR_DEVICE_ERROR)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SeedRandom(h: CK_SESSION_HANDLE, seed: *mut u8, len: CK_ULONG) -> CK_RV {
    run(|| {
        live()?;
        with_token(|t| t.session(h).map(|_| ()))?;
        unsafe { bytes(seed, len) }?;
        Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
    })
}

// ---- what the token does not do ---------------------------------------------------------------

macro_rules! unsupported {
    ($($name:ident($($arg:ty),* $(,)?)),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($(_: $arg),*) -> CK_RV {
            run(|| {
                live()?;
                Err(CKR_FUNCTION_NOT_SUPPORTED)
            })
        }
    )*};
}

unsupported!(
    C_GetOperationState(CK_SESSION_HANDLE, *mut u8, *mut CK_ULONG),
    C_SetOperationState(CK_SESSION_HANDLE, *mut u8, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE),
    C_GetObjectSize(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG),
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE),
    C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE),
    C_SignRecover(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE),
    C_VerifyRecover(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG),
    C_DeriveKey(
        CK_SESSION_HANDLE,
        *mut CK_MECHANISM,
        CK_OBJECT_HANDLE,
        *mut CK_ATTRIBUTE,
        CK_ULONG,
        *mut CK_OBJECT_HANDLE,
    ),
    C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, CK_VOID_PTR),
);

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionStatus(_h: CK_SESSION_HANDLE) -> CK_RV {
    run(|| {
        live()?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CancelFunction(_h: CK_SESSION_HANDLE) -> CK_RV {
    run(|| {
        live()?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    })
}

static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION { major: 2, minor: 40 },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
