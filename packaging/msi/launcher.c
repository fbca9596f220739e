/* zlayer.exe: the Windows launcher the MSI installs. Runs "<Python 3.11>\python.exe -m zlayer ARGS" with the
 * install folder's lib\ on PYTHONPATH and exits with its status. Python's folder is read from
 * HKLM\SOFTWARE\Python\PythonCore\3.11\InstallPath (the installer's LaunchCondition requires it).
 *
 * As the Windows service (its command line ends in "--service", as zlayer.hostservice.windows_service() says) it is
 * the SCM's service host: it reports RUNNING, runs the same child without "--service", reports STOPPED with the
 * child's status when the child ends, and ends the child when the SCM asks it to stop. */
#include <windows.h>
#include <wchar.h>

static int fail(const wchar_t *what) {
    fwprintf(stderr, L"zlayer: %ls (error %lu)\n", what, GetLastError());
    return 127;
}

static SERVICE_STATUS_HANDLE status_handle;
static SERVICE_STATUS status = {.dwServiceType = SERVICE_WIN32_OWN_PROCESS};
static PROCESS_INFORMATION child;
static wchar_t *python_path, *child_line;

static void report(DWORD state, DWORD code) {
    status.dwCurrentState = state;
    status.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
    status.dwWin32ExitCode = code ? ERROR_SERVICE_SPECIFIC_ERROR : NO_ERROR;
    status.dwServiceSpecificExitCode = code;
    SetServiceStatus(status_handle, &status);
}

static DWORD WINAPI control(DWORD ctl, DWORD type, void *data, void *ctx) {
    (void)type, (void)data, (void)ctx;
    if (ctl == SERVICE_CONTROL_STOP || ctl == SERVICE_CONTROL_SHUTDOWN) {
        report(SERVICE_STOP_PENDING, 0);
        if (child.hProcess) TerminateProcess(child.hProcess, 0);
        return NO_ERROR;
    }
    return ctl == SERVICE_CONTROL_INTERROGATE ? NO_ERROR : ERROR_CALL_NOT_IMPLEMENTED;
}

static void WINAPI service_main(DWORD argc, wchar_t **argv) {
    (void)argc;
    status_handle = RegisterServiceCtrlHandlerExW(argv[0], control, NULL);
    if (!status_handle) return;
    report(SERVICE_START_PENDING, 0);
    STARTUPINFOW si = {.cb = sizeof(si)};
    if (!CreateProcessW(python_path, child_line, NULL, NULL, FALSE, CREATE_NO_WINDOW, NULL, NULL, &si, &child)) {
        report(SERVICE_STOPPED, GetLastError());
        return;
    }
    report(SERVICE_RUNNING, 0);
    WaitForSingleObject(child.hProcess, INFINITE);
    DWORD code = 1;
    GetExitCodeProcess(child.hProcess, &code);
    report(SERVICE_STOPPED, status.dwCurrentState == SERVICE_STOP_PENDING ? 0 : code);
}

int wmain(void) {
    wchar_t python[MAX_PATH + 16], self[MAX_PATH], lib[MAX_PATH + 8];
    DWORD size = sizeof(python) - 16 * sizeof(wchar_t);
    if (RegGetValueW(HKEY_LOCAL_MACHINE, L"SOFTWARE\\Python\\PythonCore\\3.11\\InstallPath", NULL, RRF_RT_REG_SZ,
                     NULL, python, &size) != ERROR_SUCCESS)
        return fail(L"Python 3.11 is not installed (HKLM\\SOFTWARE\\Python\\PythonCore\\3.11\\InstallPath)");
    size_t n = wcslen(python);
    if (n && python[n - 1] != L'\\') wcscat(python, L"\\");
    wcscat(python, L"python.exe");

    DWORD len = GetModuleFileNameW(NULL, self, MAX_PATH);
    if (!len || len >= MAX_PATH) return fail(L"cannot find zlayer.exe's own folder");
    wchar_t *slash = wcsrchr(self, L'\\');
    if (slash) slash[1] = 0;
    _snwprintf(lib, MAX_PATH + 8, L"%lslib", self);
    lib[MAX_PATH + 7] = 0;
    if (!SetEnvironmentVariableW(L"PYTHONPATH", lib)) return fail(L"cannot set PYTHONPATH");

    /* the arguments after our own program name, as the caller quoted them */
    const wchar_t *args = GetCommandLineW();
    int quoted = 0;
    while (*args && (quoted || (*args != L' ' && *args != L'\t'))) {
        if (*args == L'"') quoted = !quoted;
        args++;
    }
    size_t cap = wcslen(python) + wcslen(args) + 32;
    wchar_t *line = HeapAlloc(GetProcessHeap(), 0, cap * sizeof(wchar_t));
    if (!line) return fail(L"out of memory");
    _snwprintf(line, cap, L"\"%ls\" -m zlayer%ls", python, args);
    line[cap - 1] = 0;

    /* service mode: the command line ends in " --service"; the child runs without it */
    static const wchar_t flag[] = L" --service";
    size_t ln = wcslen(line), lf = wcslen(flag);
    if (ln > lf && wcscmp(line + ln - lf, flag) == 0) {
        line[ln - lf] = 0;
        python_path = python;
        child_line = line;
        SERVICE_TABLE_ENTRYW table[] = {{(wchar_t *)L"zlayer", service_main}, {NULL, NULL}};
        return StartServiceCtrlDispatcherW(table) ? 0 : fail(L"--service: not started by the service manager");
    }

    STARTUPINFOW si = {.cb = sizeof(si)};
    PROCESS_INFORMATION pi;
    if (!CreateProcessW(python, line, NULL, NULL, TRUE, 0, NULL, NULL, &si, &pi))
        return fail(L"cannot start python.exe");
    WaitForSingleObject(pi.hProcess, INFINITE);
    DWORD status = 1;
    GetExitCodeProcess(pi.hProcess, &status);
    CloseHandle(pi.hThread);
    CloseHandle(pi.hProcess);
    return (int)status;
}
